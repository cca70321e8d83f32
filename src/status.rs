//! The status view behind `GET /status` and `clevertap-deleter status`: what
//! an operator asks first when something is stuck. Per partition, what is
//! committed, read and held back behind which event; per region, whether it
//! is held and how busy it is; the dead-letter and audit writers' state.
//! The coordinator builds the pipeline's part on request, so nothing is
//! computed while nobody looks.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::ledger::PartitionView;

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
