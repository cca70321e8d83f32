//! The status view behind `GET /status` and `clevertap-deleter status`: what
//! an operator asks first when something is stuck. Per partition, what is
//! committed, read and held back behind which event; per region, whether it
//! is held and how busy it is; the dead-letter and audit writers' state.
//! The coordinator builds the pipeline's part on request, so nothing is
//! computed while nobody looks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::domain::outcome::PartitionView;

/// One region (CleverTap account) as the dispatcher sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionView {
    pub region: String,
    pub account_id: String,
    pub held: bool,
    pub in_flight: usize,
    pub concurrency_limit: usize,
    /// Batches waiting for or in a request.
    pub batches_pending: usize,
}

/// A Kafka writer (dead letters, audit records).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriterView {
    pub writer: String,
    pub held: bool,
    /// What an operator must do, while held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// What the coordinator reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineView {
    pub events_in_memory: usize,
    pub consumer_paused: bool,
    pub partitions: Vec<PartitionView>,
    pub regions: Vec<RegionView>,
}

/// The whole answer of `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub ready: bool,
    /// Why not ready (the `/readyz` lines).
    pub reasons: Vec<String>,
    pub kafka_connected: bool,
    pub writers: Vec<WriterView>,
    /// Absent while the pipeline is starting or stopping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineView>,
}

/// A request for the pipeline's view, answered by the coordinator.
pub type ViewRequest = oneshot::Sender<PipelineView>;

/// The handle the HTTP server holds to ask the coordinator.
#[derive(Clone, Default)]
pub struct StatusLink {
    requests: std::sync::Arc<std::sync::Mutex<Option<mpsc::Sender<ViewRequest>>>>,
}

impl StatusLink {
    /// Connects the link to a running coordinator: returns the receiving end.
    pub fn connect(&self) -> mpsc::Receiver<ViewRequest> {
        let (tx, rx) = mpsc::channel(8);
        *self.requests.lock().expect("status lock") = Some(tx);
        rx
    }

    /// The pipeline's view, or `None` when no coordinator answers in time.
    pub async fn pipeline_view(&self) -> Option<PipelineView> {
        let tx = self.requests.lock().expect("status lock").clone()?;
        let (reply, answer) = oneshot::channel();
        tx.try_send(reply).ok()?;
        tokio::time::timeout(Duration::from_secs(2), answer)
            .await
            .ok()?
            .ok()
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The report as a table for a terminal (`clevertap-deleter status`).
pub fn render_table(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ready: {}   kafka: {}",
        if r.ready { "yes" } else { "NO" },
        if r.kafka_connected {
            "connected"
        } else {
            "NOT connected"
        }
    );
    for reason in &r.reasons {
        let _ = writeln!(out, "  not ready: {reason}");
    }
    let Some(p) = &r.pipeline else {
        out.push_str("pipeline: not running (starting or stopping)\n");
        return out;
    };
    let _ = writeln!(
        out,
        "events in memory: {}   consumption: {}",
        p.events_in_memory,
        if p.consumer_paused {
            "held (backpressure)"
        } else {
            "running"
        }
    );
    out.push_str("\nPARTITION                     COMMITTED      READ  HELD BACK  UNFINISHED  OLDEST (offset, age)\n");
    for v in &p.partitions {
        let oldest = match (v.oldest_unfinished_offset, v.oldest_unfinished_age_secs) {
            (Some(o), Some(age)) => format!("{o}, {age:.0} s"),
            _ => "-".to_string(),
        };
        let name = format!("{}/{}", v.topic, v.partition);
        let _ = writeln!(
            out,
            "{name:<28} {:>10} {:>9} {:>10} {:>11}  {oldest}",
            opt(v.committed),
            opt(v.read_up_to),
            v.held_back,
            v.unfinished
        );
    }
    if p.partitions.is_empty() {
        out.push_str("(no partition assigned)\n");
    }
    out.push_str("\nREGION    ACCOUNT              HELD  IN FLIGHT  LIMIT  BATCHES\n");
    for g in &p.regions {
        let _ = writeln!(
            out,
            "{:<9} {:<20} {:<5} {:>9} {:>6} {:>8}",
            g.region,
            g.account_id,
            if g.held { "YES" } else { "no" },
            g.in_flight,
            g.concurrency_limit,
            g.batches_pending
        );
    }
    out.push_str("\nWRITER       STATE\n");
    for w in &r.writers {
        let state = match (&w.held, &w.remedy) {
            (true, Some(remedy)) => format!("HELD: {remedy}"),
            (true, None) => "HELD".to_string(),
            _ => "ok".to_string(),
        };
        let _ = writeln!(out, "{:<12} {state}", w.writer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_what_holds_a_partition() {
        let report = StatusReport {
            ready: false,
            reasons: vec!["dead_letter writes held: topic t.dlq does not exist: create it".into()],
            kafka_connected: true,
            writers: vec![WriterView {
                writer: "dead_letter".into(),
                held: true,
                remedy: Some("topic t.dlq does not exist: create it".into()),
            }],
            pipeline: Some(PipelineView {
                events_in_memory: 1,
                consumer_paused: false,
                partitions: vec![PartitionView {
                    topic: "t".into(),
                    partition: 0,
                    committed: Some(100),
                    read_up_to: Some(1000),
                    committable: Some(100),
                    held_back: 900,
                    unfinished: 1,
                    oldest_unfinished_offset: Some(100),
                    oldest_unfinished_age_secs: Some(42.0),
                }],
                regions: vec![RegionView {
                    region: "eu1".into(),
                    account_id: "ACC".into(),
                    held: false,
                    in_flight: 3,
                    concurrency_limit: 10,
                    batches_pending: 4,
                }],
            }),
        };
        let table = render_table(&report);
        assert!(table.contains("ready: NO"), "{table}");
        assert!(table.contains("t/0"), "{table}");
        assert!(table.contains("900"), "{table}");
        assert!(table.contains("100, 42 s"), "{table}");
        assert!(
            table.contains("HELD: topic t.dlq does not exist"),
            "{table}"
        );
        assert!(table.contains("eu1"), "{table}");
    }
}
