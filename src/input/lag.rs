//! `consumer_lag_messages`: the messages between the consumer's position and
//! the end of each assigned partition, from the moment it is assigned.
//!
//! librdkafka's statistics report a lag only after their first interval, only
//! against the committed offset, and with a stale end offset for paused
//! partitions (nothing is fetched for them, so the cached watermark stops),
//! which is exactly when the lag matters. Here a thread of its own asks the
//! brokers for the watermarks of every assigned partition once per interval
//! (and at once after an assignment), so the consumer thread never waits on
//! the network for it; the consumer thread only reports what is assigned,
//! where each partition starts, and its position (a local read).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::domain::offsets::PartitionId;
use crate::ops::metrics::Metrics;

/// Watermark queries give up after this long (a broker outage); the gauge
/// keeps its last value meanwhile.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The lag of one partition. `position` is the consumer's (the offset it
/// hands to the pipeline next), `start` where the assignment started (the
/// group's committed offset), `low`/`high` the partition's watermarks.
/// Without either offset the consumer starts at the earliest retained record
/// or at the end, per `auto.offset.reset`. Records below the log start were
/// removed by retention: they are lost (records_lost_total), not lag.
pub fn lag(
    position: Option<i64>,
    start: Option<i64>,
    low: i64,
    high: i64,
    from_earliest: bool,
) -> i64 {
    let at = position
        .or(start)
        .unwrap_or(if from_earliest { low } else { high });
    (high - at.max(low)).max(0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Tracked {
    position: Option<i64>,
    start: Option<i64>,
}

type Key = (Arc<str>, i32);

#[derive(Default)]
struct State {
    partitions: BTreeMap<Key, Tracked>,
    /// Revoked since the last round: their series are removed.
    removed: Vec<Key>,
    refresh_now: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Owned by the consumer; dropping it stops the lag thread.
pub struct LagTracker {
    shared: Arc<Shared>,
}

/// The consumer's configuration without what makes a group member: the lag
/// thread's client only asks for watermarks.
fn watermark_client_config(consumer: &ClientConfig) -> ClientConfig {
    let mut c = consumer.clone();
    for key in [
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.remote.assignor",
    ] {
        c.remove(key);
    }
    let client_id = format!(
        "{}-lag",
        consumer.get("client.id").unwrap_or("clevertap-deleter")
    );
    c.set("client.id", client_id)
        .set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false");
    c
}

impl LagTracker {
    /// Starts the lag thread with its own client (same brokers and security
    /// settings as the consumer). A client that cannot be created costs only
    /// the metric: logged, and the tracker does nothing.
    pub fn start(consumer_config: &ClientConfig, interval: Duration, metrics: Metrics) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let from_earliest = matches!(
            consumer_config.get("auto.offset.reset"),
            Some("earliest" | "smallest" | "beginning")
        );
        match watermark_client_config(consumer_config).create::<BaseConsumer>() {
            Ok(client) => {
                let thread_shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("kafka-lag".into())
                    .spawn(move || run(client, thread_shared, interval, from_earliest, metrics));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start the lag thread; consumer_lag_messages is not exported");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the client that reads partition ends; consumer_lag_messages is not exported");
            }
        }
        LagTracker { shared }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.shared.state.lock().expect("lag lock");
        f(&mut state);
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Partitions just assigned, with where each starts (the committed
    /// offset, if any): their lag is exported at once.
    pub fn assigned(&self, partitions: impl IntoIterator<Item = (PartitionId, Option<i64>)>) {
        self.update(|s| {
            for (p, start) in partitions {
                let key = (p.topic, p.partition);
                s.removed.retain(|k| *k != key);
                s.partitions.insert(
                    key,
                    Tracked {
                        position: None,
                        start,
                    },
                );
            }
            s.refresh_now = true;
        });
    }

    /// Partitions given up: their series go away, so a partition that moved
    /// to another replica is not reported twice.
    pub fn revoked(&self, partitions: &[PartitionId]) {
        self.update(|s| {
            for p in partitions {
                let key = (p.topic.clone(), p.partition);
                if s.partitions.remove(&key).is_some() {
                    s.removed.push(key);
                }
            }
        });
    }

    /// The consumer's positions (`Consumer::position`); invalid ones (nothing
    /// fetched yet) leave the start offset in charge.
    pub fn positions(&self, positions: &TopicPartitionList) {
        let mut state = self.shared.state.lock().expect("lag lock");
        for e in positions.elements() {
            if let Offset::Offset(o) = e.offset() {
                let key: Key = (Arc::from(e.topic()), e.partition());
                if let Some(t) = state.partitions.get_mut(&key) {
                    t.position = Some(o);
                }
            }
        }
    }
}

impl Drop for LagTracker {
    fn drop(&mut self) {
        self.update(|s| s.stop = true);
    }
}

fn run(
    client: BaseConsumer,
    shared: Arc<Shared>,
    interval: Duration,
    from_earliest: bool,
    metrics: Metrics,
) {
    loop {
        let (partitions, removed) = {
            let mut state = shared.state.lock().expect("lag lock");
            if !state.refresh_now && !state.stop {
                state = shared
                    .wake
                    .wait_timeout_while(state, interval, |s| !s.refresh_now && !s.stop)
                    .expect("lag lock")
                    .0;
            }
            if state.stop {
                return;
            }
            state.refresh_now = false;
            let partitions: Vec<Key> = state.partitions.keys().cloned().collect();
            (partitions, std::mem::take(&mut state.removed))
        };
        for (topic, partition) in removed {
            let _ = metrics
                .consumer_lag
                .remove_label_values(&[&*topic, partition.to_string().as_str()]);
        }
        for (topic, partition) in partitions {
            let (low, high) = match client.fetch_watermarks(
                &topic,
                partition,
                QUERY_TIMEOUT.min(interval * 2),
            ) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(%topic, partition, error = %e, "could not read the partition's watermarks");
                    continue;
                }
            };
            // Still assigned? A revoke during the query must not bring the
            // series back.
            let state = shared.state.lock().expect("lag lock");
            if state.stop {
                return;
            }
            if let Some(t) = state.partitions.get(&(topic.clone(), partition)) {
                metrics
                    .consumer_lag
                    .with_label_values(&[&*topic, partition.to_string().as_str()])
                    .set(lag(t.position, t.start, low, high, from_earliest));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_position_then_the_start_then_the_reset_policy() {
        // Read up to 40 of 100.
        assert_eq!(lag(Some(40), Some(10), 0, 100, true), 60);
        // Nothing read yet: from the committed offset.
        assert_eq!(lag(None, Some(10), 0, 100, true), 90);
        // No committed offset: from the log start, or nothing with `latest`.
        assert_eq!(lag(None, None, 20, 100, true), 80);
        assert_eq!(lag(None, None, 20, 100, false), 0);
        // Retention removed records below the position: lost, not lag.
        assert_eq!(lag(None, Some(10), 50, 100, true), 50);
        // Never negative (a stale end offset).
        assert_eq!(lag(Some(120), None, 0, 100, true), 0);
    }

    #[test]
    fn the_lag_client_is_not_a_group_member() {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "localhost:9092")
            .set("group.id", "g")
            .set("group.instance.id", "i")
            .set("client.id", "clevertap-deleter")
            .set("statistics.interval.ms", "5000")
            .set("security.protocol", "SSL");
        let w = watermark_client_config(&c);
        assert_eq!(w.get("group.id"), None);
        assert_eq!(w.get("group.instance.id"), None);
        assert_eq!(w.get("client.id"), Some("clevertap-deleter-lag"));
        assert_eq!(w.get("statistics.interval.ms"), Some("0"));
        assert_eq!(
            w.get("security.protocol"),
            Some("SSL"),
            "same security settings"
        );
    }
}
