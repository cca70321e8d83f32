//! The topics the throughput benchmark reads: what each holds, producing
//! them, and creating them on a real cluster.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clevertap_deleter::testkit::synth::{generate, SynthEvent, SynthSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

pub const REGIONS: [&str; 3] = ["eu1", "in1", "us1"];

/// What a topic holds; each is read by the plain consumer and the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every event a deletion, 20 % repeating an earlier one (a producer retrying).
    Deletions,
    /// 99 % of events of another type, which the daemon skips.
    Skip,
    /// 1,000 deletions repeated over and over: after the first round every id
    /// is in the recently-deleted memory.
    Repeats,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Deletions, Workload::Skip, Workload::Repeats];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Deletions => "deletions",
            Workload::Skip => "skip",
            Workload::Repeats => "repeats",
        }
    }

    pub fn topic(self, base: &str) -> String {
        format!("{base}-{}", self.name())
    }

    fn events(self, total: usize) -> Vec<SynthEvent> {
        let spec = |count, duplicate_ratio| SynthSpec {
            count,
            regions: REGIONS.iter().map(|r| r.to_string()).collect(),
            duplicate_ratio,
            poison_ratio: 0.0,
            seed: 5,
            ..SynthSpec::default()
        };
        match self {
            Workload::Deletions => generate(&spec(total, 0.2)),
            Workload::Skip => generate(&spec(total, 0.0))
                .into_iter()
                .enumerate()
                .map(|(n, mut e)| {
                    if n % 100 != 0 {
                        let text =
                            String::from_utf8(e.payload).expect("synthetic events are UTF-8");
                        e.payload = text
                            .replacen("\"user-deleted\"", "\"user-updated\"", 1)
                            .into_bytes();
                        e.deletions.clear();
                    }
                    e
                })
                .collect(),
            Workload::Repeats => {
                let base = generate(&spec(1_000.min(total), 0.0));
                (0..total).map(|n| base[n % base.len()].clone()).collect()
            }
        }
    }
}

/// A produced topic: its size, and what the daemon must delete from it.
pub struct Produced {
    pub workload: Workload,
    pub topic: String,
    pub total: usize,
    pub avg_bytes: usize,
    pub distinct_ids: usize,
    /// The end offset of each partition.
    pub end: Vec<i64>,
}

/// Writes `total` events of `workload` round-robin over the partitions.
pub fn produce(
    brokers: &str,
    workload: Workload,
    topic: String,
    total: usize,
    partitions: i32,
) -> Produced {
    eprintln!("producing {total} events to {topic} ({partitions} partitions) at {brokers}...");
    let events = workload.events(total);
    let avg_bytes = events.iter().map(|e| e.payload.len()).sum::<usize>() / total.max(1);
    let distinct_ids = events
        .iter()
        .flat_map(|e| {
            e.deletions
                .iter()
                .map(|d| (d.region.clone(), d.kind, d.id.clone()))
        })
        .collect::<HashSet<_>>()
        .len();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let mut end = vec![0i64; partitions as usize];
    for (i, e) in events.iter().enumerate() {
        let partition = (i % partitions as usize) as i32;
        end[partition as usize] += 1;
        let mut record = BaseRecord::to(&topic)
            .key(e.key.as_bytes())
            .payload(&e.payload[..])
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    Produced {
        workload,
        topic,
        total,
        avg_bytes,
        distinct_ids,
        end,
    }
}

/// The source topics and their dead-letter topics on a real cluster.
pub fn create_topics(brokers: &str, topics: &[String], partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let dlqs: Vec<String> = topics.iter().map(|t| format!("{t}.dlq")).collect();
    let mut new = Vec::new();
    for (topic, dlq) in topics.iter().zip(&dlqs) {
        new.push(NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(-1),
        ));
        new.push(NewTopic::new(dlq, 1, TopicReplication::Fixed(-1)));
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for result in runtime
        .block_on(admin.create_topics(&new, &options))
        .expect("create topics")
    {
        result.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    // Until every partition has a leader.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    for topic in topics {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics().first().map(|t| {
                        t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: not every partition has a leader after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
