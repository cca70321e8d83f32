//! The start-up read-back that fills the recently-deleted memory (see
//! `input::warm`). It runs beside the consumer, which joins the group with
//! intake held and its partitions paused; the coordinator lets go once the
//! deletions are in the ledger, so no event is admitted before them.

use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::domain::dedup::DeletionKey;
use crate::domain::offsets::PartitionId;
use crate::input::decode::EventDecoder;
use crate::input::warm::{self, WarmSettings};
use crate::ops::metrics::Metrics;

use super::consumer_config;

/// Whether this start reads the recent past back: on, not a dry run (nothing
/// was deleted), and a memory to fill.
pub fn enabled(config: &Config) -> bool {
    let s = &config.settings;
    s.dedup.warm_events > 0 && s.dedup.recent_ttl_secs > 0 && !s.api.dry_run
}

/// What the read-back found, ready for the ledger.
#[derive(Default)]
pub struct Recalled {
    /// Oldest first, dated on this process's clock.
    pub deletions: Vec<(DeletionKey, Instant)>,
    /// Dead letters written for events not committed yet.
    pub dead_letters: Vec<(PartitionId, i64, u64)>,
}

/// The deletions and dead letters to remember. Empty when the read fails:
/// the daemon then starts as it would have without it.
pub async fn recall(config: &Config, fingerprint: &str, metrics: &Metrics) -> Recalled {
    let started = Instant::now();
    let (config, fingerprint) = (config.clone(), fingerprint.to_string());
    let read = tokio::task::spawn_blocking(move || {
        let s = &config.settings;
        let decoder = EventDecoder::new(&s.event, &config.regions);
        warm::read_recent(&WarmSettings {
            client_config: consumer_config(&config),
            topics: &s.kafka.topics,
            dead_letter_topic: &s.kafka.dlq_topic,
            decoder: &decoder,
            fingerprint: &fingerprint,
            max_events: s.dedup.warm_events,
            ttl: Duration::from_secs(s.dedup.recent_ttl_secs),
            timeout: Duration::from_millis(s.dedup.warm_timeout_ms),
        })
    })
    .await;
    let warmed = match read {
        Ok(Ok(warmed)) => warmed,
        Ok(Err(e)) => {
            metrics.dedup_warm_failures.inc();
            tracing::warn!(
                error = %e,
                "could not read back the recent past; starting with an empty dedup memory \
                 (repeats of ids deleted before this start are sent again)"
            );
            return Recalled::default();
        }
        Err(e) => {
            metrics.dedup_warm_failures.inc();
            tracing::warn!(error = %e, "the read-back of the recent past failed");
            return Recalled::default();
        }
    };
    tracing::info!(
        ids = warmed.deletions.len(),
        events_read = warmed.events_read,
        partitions = warmed.partitions,
        dead_lettered_left_out = warmed.dead_lettered,
        dead_letters_above_commits = warmed.written_dead_letters.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "dedup memory warmed from below the committed offsets"
    );
    metrics.dedup_warmed_ids.set(warmed.deletions.len() as i64);
    Recalled {
        deletions: on_this_clock(warmed.deletions, SystemTime::now(), Instant::now()),
        dead_letters: warmed.written_dead_letters,
    }
}

/// Wall-clock dates as instants of this process (ages kept); a date this
/// clock cannot express (older than the machine's uptime) is left out.
fn on_this_clock(
    deletions: Vec<(DeletionKey, SystemTime)>,
    wall: SystemTime,
    now: Instant,
) -> Vec<(DeletionKey, Instant)> {
    deletions
        .into_iter()
        .filter_map(|(key, at)| {
            let age = wall.duration_since(at).unwrap_or_default();
            Some((key, now.checked_sub(age)?))
        })
        .collect()
}
