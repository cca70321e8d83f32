//! Liveness and readiness state shared by the consumer, the dispatcher and the
//! HTTP endpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::statistics::Statistics;

use crate::ops::metrics::{Metrics, KAFKA_WRITERS};
use crate::ops::status::{StatusLink, StatusReport, WriterView};

/// True when a client's statistics show at least one broker connected.
pub fn any_broker_up(stats: &Statistics) -> bool {
    stats
        .brokers
        .values()
        .any(|b| b.nodeid >= 0 && b.state == "UP")
}

/// The `/readyz` line of a region held because CleverTap answers 401/403/404.
pub const HELD_REFUSED: &str = "held, CleverTap refuses the credentials or endpoint";

/// The `/readyz` line of a region whose endpoint gives no answer.
pub const UNREACHABLE: &str =
    "unreachable, no answer from CleverTap (connection refused, reset or timed out)";

#[derive(Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
    metrics: Metrics,
    status: StatusLink,
}

struct HealthInner {
    kafka_connected: AtomicBool,
    stopping: AtomicBool,
    /// Held regions and the `/readyz` line saying why.
    held_regions: Mutex<BTreeMap<String, &'static str>>,
    /// Regions whose requests get no answer at all (see `dispatch`).
    unreachable_regions: Mutex<std::collections::BTreeSet<String>>,
    /// Dead-letter or audit writers held by an error only an operator can
    /// end, with what to do about it.
    held_writers: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                kafka_connected: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                held_regions: Mutex::new(BTreeMap::new()),
                unreachable_regions: Mutex::new(std::collections::BTreeSet::new()),
                held_writers: Mutex::new(BTreeMap::new()),
            }),
            metrics,
            status: StatusLink::default(),
        }
    }

    /// Where the coordinator answers status requests.
    pub fn status_link(&self) -> &StatusLink {
        &self.status
    }

    /// Everything `GET /status` shows.
    pub async fn status_report(&self) -> StatusReport {
        let readiness = self.readiness();
        let writers = {
            let held = self.inner.held_writers.lock().expect("health lock");
            KAFKA_WRITERS
                .iter()
                .map(|w| WriterView {
                    writer: w.to_string(),
                    held: held.contains_key(w),
                    remedy: held.get(w).cloned(),
                })
                .collect()
        };
        StatusReport {
            ready: readiness.is_ok(),
            reasons: readiness.err().unwrap_or_default(),
            kafka_connected: self.kafka_connected(),
            writers,
            pipeline: self.status.pipeline_view().await,
        }
    }

    pub fn set_kafka_connected(&self, connected: bool) {
        self.inner
            .kafka_connected
            .store(connected, Ordering::Relaxed);
        self.metrics.kafka_connected.set(connected as i64);
    }

    pub fn kafka_connected(&self) -> bool {
        self.inner.kafka_connected.load(Ordering::Relaxed)
    }

    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// Marks a region held (401/403/404) or released. Returns true if it changed.
    pub fn set_region_held(&self, region: &str, held: bool) -> bool {
        if held {
            self.hold_region(region, HELD_REFUSED)
        } else {
            self.release_region(region)
        }
    }

    /// Marks a region held; `why` is its `/readyz` line after `region NAME: `.
    /// Returns true if it was not held before.
    pub fn hold_region(&self, region: &str, why: &'static str) -> bool {
        let mut held = self.inner.held_regions.lock().expect("health lock");
        let changed = held.insert(region.to_string(), why).is_none();
        if changed {
            self.metrics.region_held.with_label_values(&[region]).set(1);
        }
        changed
    }

    /// Releases a held region. Returns true if it was held.
    fn release_region(&self, region: &str) -> bool {
        let mut held = self.inner.held_regions.lock().expect("health lock");
        let changed = held.remove(region).is_some();
        if changed {
            self.metrics.region_held.with_label_values(&[region]).set(0);
        }
        changed
    }

    /// Marks a region unreachable or reachable. Returns true if it changed.
    pub fn set_region_unreachable(&self, region: &str, unreachable: bool) -> bool {
        let mut regions = self.inner.unreachable_regions.lock().expect("health lock");
        if unreachable {
            regions.insert(region.to_string())
        } else {
            regions.remove(region)
        }
    }

    pub fn region_held(&self, region: &str) -> bool {
        self.inner
            .held_regions
            .lock()
            .expect("health lock")
            .contains_key(region)
    }

    /// Marks a Kafka writer (`dead_letter`, `audit`) held with the remedy, or
    /// no longer held (`None`).
    pub fn writer_held(&self, writer: &'static str, remedy: Option<String>) {
        let mut writers = self.inner.held_writers.lock().expect("health lock");
        match remedy {
            Some(remedy) => {
                writers.insert(writer, remedy);
            }
            None => {
                writers.remove(writer);
            }
        }
    }

    /// `Ok` when ready; otherwise every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.kafka_connected() {
            reasons.push("kafka: consumer not connected".to_string());
        }
        if self.inner.stopping.load(Ordering::Relaxed) {
            reasons.push("shutting down".to_string());
        }
        for (region, why) in self.inner.held_regions.lock().expect("health lock").iter() {
            reasons.push(format!("region {region}: {why}"));
        }
        for region in self
            .inner
            .unreachable_regions
            .lock()
            .expect("health lock")
            .iter()
        {
            reasons.push(format!("region {region}: {UNREACHABLE}"));
        }
        for (writer, remedy) in self.inner.held_writers.lock().expect("health lock").iter() {
            reasons.push(format!("{writer} writes held: {remedy}"));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}
