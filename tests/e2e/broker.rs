//! The real broker of the end-to-end suites, and plain Kafka clients to
//! create topics, produce events and read what the daemon left behind
//! (committed offsets, high watermarks, dead letters).
//!
//! Which broker (see docs/TESTING.md "Real-broker tests"):
//! - by default, Apache Kafka 4.4.0 started by the tests through
//!   `deploy/local-kafka/local-kafka`: one 1-node cluster shared by the
//!   scenarios of a test binary (each with its own topics and group), and
//!   clusters of their own (1 or 3 nodes) for the scenarios that kill,
//!   stop or restart brokers;
//! - `KAFKA_BROKERS=host:port,...`: that cluster for the scenarios that do
//!   not touch brokers (the others still start their own local Kafka);
//! - `E2E_BROKER=testcontainers`: one apache/kafka container per scenario
//!   through testcontainers (needs a Docker engine; untested here).
//!
//! A scenario that cannot run (no Java or Maven for local-kafka, no Docker
//! engine) fails with the reason, unless `E2E_ALLOW_SKIP=1`, which skips it
//! with one line on the terminal naming the test and the reason.
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::SynthEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::local_kafka::{self, LocalKafka};

pub use crate::common::{free_port, signal};

/// The broker the suite runs against.
#[derive(Clone, Debug)]
pub enum Target {
    /// Apache Kafka through `deploy/local-kafka/local-kafka` (the default).
    LocalKafka,
    /// `KAFKA_BROKERS`: any running cluster; topics get unique names.
    External(String),
    /// `E2E_BROKER=testcontainers`: an apache/kafka container per scenario.
    Docker,
}

/// The broker selected by the environment (printed once).
pub fn target() -> Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let choice = std::env::var("E2E_BROKER").unwrap_or_default();
            let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_default();
            let target = match choice.trim() {
                "testcontainers" => Target::Docker,
                "" | "local-kafka" if !brokers.trim().is_empty() => {
                    Target::External(brokers.trim().to_string())
                }
                "" | "local-kafka" => Target::LocalKafka,
                other => panic!(
                    "E2E_BROKER={other:?}: expected local-kafka (the default) or testcontainers; \
                     set KAFKA_BROKERS for an existing cluster (tansu is no longer supported: \
                     see docs/TESTING.md \"Broker quirks\")"
                ),
            };
            match &target {
                Target::LocalKafka => println!(
                    "e2e: Apache Kafka started by the tests (deploy/local-kafka/local-kafka)"
                ),
                Target::External(b) => println!(
                    "e2e: the cluster at KAFKA_BROKERS={b}; scenarios that stop brokers start \
                     their own local Kafka"
                ),
                Target::Docker => {
                    println!("e2e: one apache/kafka container per scenario (testcontainers)")
                }
            }
            target
        })
        .clone()
}

/// The name of the running test (libtest names its thread after it).
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("(unnamed test)")
        .to_string()
}

/// A scenario that cannot run here: panics with `reason` unless
/// `E2E_ALLOW_SKIP=1`; then it prints (past the harness's capture) that the
/// test did not run and why, and returns so the test can return.
pub fn cannot_run(reason: &str) {
    let name = test_name();
    if std::env::var("E2E_ALLOW_SKIP").is_ok_and(|v| v == "1") {
        local_kafka::tell(&format!(
            "e2e: SKIPPED {name}: {reason} (E2E_ALLOW_SKIP=1; this test did NOT run)"
        ));
        return;
    }
    panic!(
        "{name} cannot run: {reason}. Install what is missing, or set E2E_ALLOW_SKIP=1 to skip \
         the real-broker tests explicitly (each prints that it did not run)."
    );
}

/// Whether a Docker daemon answers on `DOCKER_HOST` (unix sockets only) or
/// the default socket.
fn docker_answers() -> bool {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            // tcp:// and others: let testcontainers try.
            None => return !host.trim().is_empty(),
        },
        Err(_) => PathBuf::from("/var/run/docker.sock"),
    };
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// One apache/kafka container, removed on drop.
pub struct KafkaContainer {
    _node: testcontainers_modules::testcontainers::Container<
        testcontainers_modules::kafka::apache::Kafka,
    >,
    pub bootstrap: String,
}

impl KafkaContainer {
    fn start() -> KafkaContainer {
        use testcontainers_modules::kafka::apache;
        use testcontainers_modules::testcontainers::runners::SyncRunner;
        let node = apache::Kafka::default()
            .start()
            .expect("start an apache/kafka container (Docker answered)");
        let port = node
            .get_host_port_ipv4(apache::KAFKA_PORT)
            .expect("the container's Kafka port");
        KafkaContainer {
            _node: node,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }
}

/// A started local cluster, or why it could not start (missing programs).
type Shared = Result<Arc<LocalKafka>, String>;

fn shared_cluster(slot: &'static OnceLock<Shared>, nodes: u32) -> Option<Arc<LocalKafka>> {
    let cluster = slot.get_or_init(|| match local_kafka::missing_prerequisite(false) {
        Some(missing) => Err(missing),
        None => Ok(Arc::new(LocalKafka::start(nodes, false))),
    });
    match cluster {
        Ok(c) => Some(c.clone()),
        Err(missing) => {
            cannot_run(missing);
            None
        }
    }
}

/// The broker of a scenario that does not stop brokers: the target's.
/// `None` when it cannot run and skipping is allowed (see `cannot_run`).
pub fn shared() -> Option<Broker> {
    static ONE_NODE: OnceLock<Shared> = OnceLock::new();
    match target() {
        Target::LocalKafka => shared_cluster(&ONE_NODE, 1).map(Broker::local),
        Target::External(bootstrap) => Some(Broker {
            bootstrap,
            replication: -1,
            cluster: None,
            _container: None,
        }),
        Target::Docker => {
            if !docker_answers() {
                cannot_run(
                    "E2E_BROKER=testcontainers, but no Docker engine answers (DOCKER_HOST or \
                     /var/run/docker.sock)",
                );
                return None;
            }
            let container = KafkaContainer::start();
            Some(Broker {
                bootstrap: container.bootstrap.clone(),
                replication: 1,
                cluster: None,
                _container: Some(container),
            })
        }
    }
}

/// A 3-node cluster shared by the scenarios of this test binary that need
/// three brokers; nodes a failed scenario left down are started again.
pub fn shared_three_nodes() -> Option<Broker> {
    static THREE_NODES: OnceLock<Shared> = OnceLock::new();
    let cluster = shared_cluster(&THREE_NODES, 3)?;
    cluster.heal();
    Some(Broker::local(cluster))
}

/// A local cluster of the scenario's own (it stops or kills brokers), whatever
/// the target; stopped when the scenario ends.
pub fn own(nodes: u32, sasl: bool) -> Option<Broker> {
    if let Some(missing) = local_kafka::missing_prerequisite(sasl) {
        cannot_run(&missing);
        return None;
    }
    Some(Broker::local(Arc::new(LocalKafka::start(nodes, sasl))))
}

/// The broker of one scenario.
pub struct Broker {
    /// PLAINTEXT bootstrap (the test's own clients use it; on a SASL_SSL
    /// cluster the daemon gets `cluster.sasl.bootstrap`).
    pub bootstrap: String,
    /// Replication factor of the topics the tests create (-1: the broker's default).
    pub replication: i32,
    pub cluster: Option<Arc<LocalKafka>>,
    /// Held so the container lives as long as the test's broker.
    _container: Option<KafkaContainer>,
}

impl Broker {
    fn local(cluster: Arc<LocalKafka>) -> Broker {
        Broker {
            bootstrap: cluster.bootstrap.clone(),
            replication: cluster.nodes.min(3) as i32,
            cluster: Some(cluster),
            _container: None,
        }
    }

    /// The local cluster (panics for other targets).
    pub fn local_kafka(&self) -> &LocalKafka {
        self.cluster
            .as_deref()
            .expect("this scenario runs on a local Kafka cluster")
    }

    /// Creates the topics through the Kafka admin API (so the same code works
    /// against any cluster) and waits until their metadata shows every
    /// partition with a leader.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(self.replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
        let results = futures::executor::block_on(admin.create_topics([&topic], &options))
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => panic!("create topic {topic}: {code}"),
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self.leaders(name);
            if seen.len() == partitions as usize && seen.iter().all(|&l| l >= 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name}: metadata shows leaders {seen:?}, expected {partitions} partitions"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader (broker id; -1 none) of each partition of `topic`, as the
    /// metadata says now; empty when the metadata cannot be read.
    pub fn leaders(&self, topic: &str) -> Vec<i32> {
        let consumer: BaseConsumer = self.client_config().create().expect("consumer");
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| {
                        let mut parts: Vec<(i32, i32)> = t
                            .partitions()
                            .iter()
                            .map(|p| (p.id(), p.leader()))
                            .collect();
                        parts.sort();
                        parts.into_iter().map(|(_, l)| l).collect()
                    })
            })
            .unwrap_or_default()
    }

    /// The in-sync replicas of each partition of `topic`.
    pub fn isr(&self, topic: &str) -> Vec<Vec<i32>> {
        let consumer: BaseConsumer = self.client_config().create().expect("consumer");
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().iter().map(|p| p.isr().to_vec()).collect())
            })
            .unwrap_or_default()
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3");
        c
    }

    pub fn producer(&self) -> FutureProducer {
        self.client_config()
            .set("linger.ms", "20")
            .set("queue.buffering.max.messages", "200000")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer")
    }

    /// High watermarks of partitions 0..n.
    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.client_config().create().expect("consumer");
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                    .1
            })
            .collect()
    }

    /// A client that reads the offsets `group` committed.
    pub fn offsets_reader(&self, group: &str) -> OffsetsReader {
        self.offsets_reader_with(group, "read_committed")
    }

    /// The same with `isolation.level` = `isolation`. librdkafka asks for
    /// stable offsets under read_committed (KIP-447): while a transaction
    /// that commits offsets for the group is open, the broker answers
    /// UNSTABLE_OFFSET_COMMIT until it ends. `read_uncommitted` reads the
    /// last committed offsets at once.
    pub fn offsets_reader_with(&self, group: &str, isolation: &str) -> OffsetsReader {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        OffsetsReader { consumer }
    }

    /// Every record of partitions 0..n of `topic` as (key, payload), read from
    /// the beginning up to the high watermarks as of this call.
    pub fn records(&self, topic: &str, partitions: i32) -> Vec<KeyAndPayload> {
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", "e2e-topic-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let high = self.high_watermarks(topic, partitions);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        let mut position = vec![0i64; partitions as usize];
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while position.iter().zip(&high).any(|(p, h)| p < h) {
            assert!(
                Instant::now() < deadline,
                "{topic}: read up to {position:?} of {high:?} in 60 s"
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = message.unwrap_or_else(|e| panic!("reading {topic}: {e}"));
            position[m.partition() as usize] = m.offset() + 1;
            out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
        }
        out
    }

    /// Dead-letter records of `topic` (one partition), read from the beginning
    /// up to the high watermark as of this call.
    pub fn dead_letters(&self, topic: &str) -> Vec<DeadLetter> {
        let mut reader = DlqReader::new(self, topic);
        reader.catch_up();
        reader.records
    }
}

pub struct OffsetsReader {
    consumer: BaseConsumer,
}

impl OffsetsReader {
    /// Committed offsets of partitions 0..n, -1 where none; `None` when the
    /// broker could not answer (e.g. while it is down).
    pub fn try_committed(&self, topic: &str, partitions: i32) -> Option<Vec<i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .ok()?;
        // A partition with an error (the coordinator moving): no answer.
        if committed.elements().iter().any(|e| e.error().is_err()) {
            return None;
        }
        Some(
            (0..partitions)
                .map(
                    |p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => -1,
                    },
                )
                .collect(),
        )
    }

    /// Committed offsets, retrying for up to 30 s.
    pub fn committed(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.try_committed(topic, partitions) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "cannot read the committed offsets of {topic} for 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One record of the dead-letter topic, by its headers.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
    /// `dead_lettered_at_ms`: set once per write, so two records with the
    /// same source and this are one write stored twice.
    pub at_ms: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Reads a one-partition dead-letter topic incrementally.
pub struct DlqReader {
    consumer: BaseConsumer,
    topic: String,
    position: i64,
    pub records: Vec<DeadLetter>,
}

impl DlqReader {
    pub fn new(broker: &Broker, topic: &str) -> DlqReader {
        let consumer: BaseConsumer = broker
            .client_config()
            .set("group.id", "e2e-dlq-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .expect("offset");
        consumer.assign(&tpl).expect("assign");
        DlqReader {
            consumer,
            topic: topic.to_string(),
            position: 0,
            records: Vec::new(),
        }
    }

    /// Reads until the high watermark as of this call.
    pub fn catch_up(&mut self) {
        if let Err(e) = self.try_catch_up(Duration::from_secs(60)) {
            panic!("{e}");
        }
    }

    /// Reads until the high watermark as of this call; an error (the
    /// broker unreachable, a leader moving) when that takes longer than
    /// `timeout`. What was read so far stays read.
    pub fn try_catch_up(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let high = loop {
            match self
                .consumer
                .fetch_watermarks(&self.topic, 0, Duration::from_secs(5))
            {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("watermarks of {}: {e}", self.topic))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        while self.position < high {
            if Instant::now() >= deadline {
                return Err(format!(
                    "dead-letter topic {}: read up to {} of {high} in {timeout:?}",
                    self.topic, self.position
                ));
            }
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Ok(m) = message else {
                continue;
            };
            self.position = m.offset() + 1;
            let mut headers: HashMap<String, String> = HashMap::new();
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    headers.insert(
                        header.key.to_string(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    );
                }
            }
            let header = |k: &str| headers.get(k).cloned().unwrap_or_default();
            self.records.push(DeadLetter {
                reason: header("reason"),
                at_ms: header("dead_lettered_at_ms"),
                source_topic: header("source_topic"),
                source_partition: header("source_partition").parse().unwrap_or(-1),
                source_offset: header("source_offset").parse().unwrap_or(-1),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
        }
        Ok(())
    }
}

/// Events as produced: each one's partition and offset.
pub struct Produced {
    pub topic: String,
    pub partitions: i32,
    pub events: Vec<SynthEvent>,
    /// (partition, offset) of `events[i]`.
    pub positions: Vec<(i32, i64)>,
}

impl Produced {
    /// How many events each partition holds.
    pub fn ends(&self) -> Vec<i64> {
        let mut ends = vec![0i64; self.partitions as usize];
        for (p, o) in &self.positions {
            let e = &mut ends[*p as usize];
            *e = (*e).max(o + 1);
        }
        ends
    }

    /// Adds events produced later to the same topic.
    pub fn append(&mut self, more: Produced) {
        assert_eq!(
            (&self.topic, self.partitions),
            (&more.topic, more.partitions)
        );
        self.events.extend(more.events);
        self.positions.extend(more.positions);
    }
}

/// Produces `events` round robin over the partitions (event `i` goes to
/// partition `(first + i) % partitions`) and waits for every acknowledgement;
/// returns where each landed.
pub async fn produce(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    first: usize,
    events: Vec<SynthEvent>,
) -> Produced {
    const CHUNK: usize = 20_000;
    let producer = broker.producer();
    let mut positions = Vec::with_capacity(events.len());
    for (chunk_no, chunk) in events.chunks(CHUNK).enumerate() {
        let sends: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = first + chunk_no * CHUNK + i;
                let mut record = FutureRecord::to(topic)
                    .key(e.key.as_bytes())
                    .payload(&e.payload[..])
                    .partition((n % partitions as usize) as i32);
                // CloudEvents in binary mode: the attributes are headers.
                if let Some(headers) = e.kafka_headers() {
                    record = record.headers(headers);
                }
                producer.send(record, Duration::from_secs(60))
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            let delivery = result.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
            positions.push((delivery.partition, delivery.offset));
        }
    }
    Produced {
        topic: topic.to_string(),
        partitions,
        events,
        positions,
    }
}

/// A record's key and payload, as read back.
pub type KeyAndPayload = (Option<Vec<u8>>, Option<Vec<u8>>);
