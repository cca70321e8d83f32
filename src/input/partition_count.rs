//! How many partitions the subscribed topics have, from the brokers'
//! metadata: what this replica's share of each account's budget is a part
//! of (see [`crate::domain::share::replica_share`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use tokio::sync::{mpsc, Notify};

/// How long to wait before asking for the partition count again.
const PARTITION_COUNT_RETRY: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Partitions of all `topics`, from the brokers' metadata; `None` (with a
/// warning) when a topic's count cannot be read. A pattern subscription
/// (`^...`) has no count: its replicas keep the minimum share.
pub fn partition_count<C: ClientContext>(client: &Client<C>, topics: &[String]) -> Option<usize> {
    let mut total: usize = 0;
    for topic in topics {
        if topic.starts_with('^') {
            tracing::warn!(%topic, "a pattern subscription has no partition count: each account's share stays at 1 request at once");
            return None;
        }
        let count: usize = match client.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .sum(),
            Err(e) => {
                tracing::warn!(%topic, error = %e, "cannot read the topic's partition count; retrying in {PARTITION_COUNT_RETRY:?} (meanwhile the shares use the last count read, or 1 before the first)");
                return None;
            }
        };
        if count == 0 {
            tracing::warn!(%topic, "the topic's metadata lists no partition; retrying in {PARTITION_COUNT_RETRY:?} (meanwhile the shares use the last count read, or 1 before the first)");
            return None;
        }
        total += count;
    }
    Some(total)
}

/// Reads the partition count (`count`, blocking) each time `requested` is
/// notified (after an assignment), retrying until it succeeds, and sends it
/// to `counts`. Ends when the receiver is gone.
pub async fn count_on_request(
    count: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
    retry: bool,
    requested: Arc<Notify>,
    counts: mpsc::UnboundedSender<usize>,
) {
    loop {
        tokio::select! {
            _ = requested.notified() => {}
            _ = counts.closed() => return,
        }
        loop {
            let count = count.clone();
            match tokio::task::spawn_blocking(move || count())
                .await
                .ok()
                .flatten()
            {
                Some(total) => {
                    if counts.send(total).is_err() {
                        return;
                    }
                    break;
                }
                None if retry => tokio::time::sleep(PARTITION_COUNT_RETRY).await,
                None => break,
            }
        }
    }
}
