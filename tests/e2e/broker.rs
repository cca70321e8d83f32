//! The real broker of the end-to-end suite: which one to use (`KAFKA_BROKERS`,
//! else tansu from `TANSU_BIN`, else an apache/kafka container through
//! testcontainers when a Docker daemon answers, else an installed tansu),
//! tansu processes the tests
//! start, stop and restart themselves, and plain Kafka clients to create
//! topics, produce events and read what the daemon left behind (committed
//! offsets, high watermarks, dead letters).

use std::collections::HashMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clevertap_deleter::synth::SynthEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Where tansu is installed by `.ci/run` (`cargo install tansu --root /opt/tansu`).
pub const DEFAULT_TANSU: &str = "/opt/tansu/bin/tansu";

/// The broker the suite runs against.
#[derive(Clone, Debug)]
pub enum Target {
    /// `KAFKA_BROKERS`: any running cluster; topics get unique names.
    External(String),
    /// A tansu binary; every test starts its own broker (own port, own sqlite file).
    Tansu(PathBuf),
    /// A Docker daemon answers: every test starts its own apache/kafka
    /// container (testcontainers), removed when the test ends.
    Docker,
}

impl Target {
    /// tansu's group coordination has quirks the scenarios work around
    /// (see README "tansu 0.6.0 quirks"); a Kafka broker needs none.
    pub fn is_tansu(&self) -> bool {
        matches!(self, Target::Tansu(_))
    }
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

/// A tansu binary to start, if one is available: `TANSU_BIN` (which must
/// exist when set), `/opt/tansu/bin/tansu`, or `tansu` on the PATH.
pub fn tansu_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("TANSU_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "TANSU_BIN={} is set but is not a file",
            bin.display()
        );
        return Some(bin);
    }
    if Path::new(DEFAULT_TANSU).is_file() {
        return Some(PathBuf::from(DEFAULT_TANSU));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file())
}

/// The broker to use, or `None` (after printing, once, why the suite skips).
pub fn target() -> Option<Target> {
    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
                if !brokers.trim().is_empty() {
                    println!("e2e: using the Kafka cluster at KAFKA_BROKERS={brokers}");
                    return Some(Target::External(brokers));
                }
            }
            let explicit_tansu = std::env::var_os("TANSU_BIN").is_some_and(|b| !b.is_empty());
            if !explicit_tansu && docker_answers() {
                println!(
                    "e2e: Docker answers: one apache/kafka container per test (testcontainers)"
                );
                return Some(Target::Docker);
            }
            if let Some(bin) = tansu_bin() {
                println!("e2e: starting tansu brokers from {}", bin.display());
                return Some(Target::Tansu(bin));
            }
            println!(
                "e2e: SKIPPED, no real broker: KAFKA_BROKERS is not set, no Docker daemon \
                 answers and no tansu binary (TANSU_BIN, {DEFAULT_TANSU}, PATH) was found; \
                 `.ci/run` provides tansu"
            );
            None
        })
        .clone()
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Sends a signal to a process by id (`kill -SIG pid`).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// One tansu broker process with its sqlite file in a scratch directory.
/// Stopped and started again on the same port and file; killed on drop.
pub struct Tansu {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Tansu {
    pub fn start(bin: &Path) -> Tansu {
        let mut tansu = Tansu {
            bin: bin.to_path_buf(),
            dir: super::daemon::scratch_dir("e2e-tansu-"),
            port: free_port(),
            child: None,
            starts: 0,
        };
        tansu.spawn();
        tansu
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "tansu is already running");
        self.starts += 1;
        let log = self.dir.path().join(format!("tansu-{}.log", self.starts));
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Relative to the scratch directory. Not memory://: tansu 0.6.0's
            // memory engine loses records when a consumer resumes in the middle
            // of a record batch and reports wrong high watermarks.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            // E2E_TANSU_LOG: tansu's RUST_LOG, to debug the broker side.
            .env(
                "RUST_LOG",
                std::env::var("E2E_TANSU_LOG").unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("tansu log"))
            .stderr(File::create(log.with_extension("err")).expect("tansu log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("tansu exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "tansu does not accept connections on {addr} after 30 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker with `sig` (`TERM` or `KILL`; SIGKILL after 10 s in
    /// any case) and reaps it.
    pub fn stop(&mut self, sig: &str) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), sig);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port with the same sqlite file.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in 1..=self.starts {
            for ext in ["log", "err"] {
                let path = self.dir.path().join(format!("tansu-{n}.{ext}"));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("--- {}\n", path.display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        super::daemon::keep_if_panicking(&mut self.dir, "tansu");
    }
}

/// The broker of one test: an external cluster or the test's own tansu.
pub struct Broker {
    pub bootstrap: String,
    pub tansu: Option<Tansu>,
    /// Held so the container lives as long as the test's broker.
    _container: Option<KafkaContainer>,
}

impl Broker {
    pub fn for_target(target: &Target) -> Broker {
        match target {
            Target::External(bootstrap) => Broker {
                bootstrap: bootstrap.clone(),
                tansu: None,
                _container: None,
            },
            Target::Tansu(bin) => {
                let tansu = Tansu::start(bin);
                Broker {
                    bootstrap: tansu.bootstrap(),
                    tansu: Some(tansu),
                    _container: None,
                }
            }
            Target::Docker => {
                let container = KafkaContainer::start();
                Broker {
                    bootstrap: container.bootstrap.clone(),
                    tansu: None,
                    _container: Some(container),
                }
            }
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3");
        c
    }

    /// Creates the topics through the Kafka admin API (so the same code works
    /// against any cluster) and waits until their metadata shows every partition.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
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
        let consumer: BaseConsumer = self.client_config().create().expect("consumer");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map(|t| t.partitions().len() as i32)
                });
            if seen == Some(partitions) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name}: metadata shows {seen:?} partitions, expected {partitions}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn producer(&self) -> FutureProducer {
        self.client_config()
            .set("linger.ms", "20")
            .set("batch.num.messages", "500")
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
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        OffsetsReader { consumer }
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
        let (_, high) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {}: {e}", self.topic));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.position < high {
            assert!(
                Instant::now() < deadline,
                "dead-letter topic {}: read up to {} of {high} in 60 s",
                self.topic,
                self.position
            );
            let Some(message) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = message.unwrap_or_else(|e| panic!("reading {}: {e}", self.topic));
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
                source_topic: header("source_topic"),
                source_partition: header("source_partition").parse().unwrap_or(-1),
                source_offset: header("source_offset").parse().unwrap_or(-1),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
        }
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
                let record = FutureRecord::to(topic)
                    .key(e.key.as_bytes())
                    .payload(&e.payload[..])
                    .partition((n % partitions as usize) as i32);
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
