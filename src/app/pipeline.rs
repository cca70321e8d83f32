//! Wires the stages together and runs the coordinator loop:
//! source -> ledger (dedup, batches, offsets) -> dispatcher -> acks -> commits.
//! The coordinator owns the ledger alone, so the core needs no locks.
//!
//! Parts: `clients` (librdkafka settings, the offline check), `coordinator`
//! (the loop and its handlers), `upkeep` (revokes, commits, backpressure, gauges),
//! `shares` (the account budget's share, reloaded secrets), `warm_start` (the
//! dedup memory read back at start).

mod clients;
mod coordinator;
mod shares;
mod upkeep;
mod warm_start;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clevertap::api::DeleteApi;
use crate::clevertap::dispatch::{DispatchSettings, Dispatcher};
use crate::config::Config;
use crate::domain::backoff::Backoff;
use crate::domain::ledger::{Finish, Ledger, LedgerSettings};
use crate::domain::offsets::PartitionId;
use crate::domain::revokes::RevokeQueue;
use crate::input::decode::EventDecoder;
use crate::input::partition_count;
use crate::input::source::{self, SourceCommand, SourceSettings};
use crate::input::warm;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::ops::secret_reload::{self, ReloadTrigger, SecretWatcher};
use crate::output::audit::AuditWriter;
use crate::output::dead_letter::DeadLetterWriter;
use crate::output::produce::{BrokerWatch, KafkaWriter, RecordProducer};

pub use clients::{check_clients_offline, consumer_config, producer_config};

use coordinator::{Coordinator, Inputs};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A Kafka client could not be created from the configuration.
    #[error("Kafka configuration: {0}")]
    KafkaConfig(rdkafka::error::KafkaError),
    #[error("fatal: {0}")]
    Fatal(String),
}

/// Records decoded but not yet admitted, at most (chunks of
/// [`source::SOURCE_CHUNK`]). Small, because everything in it is on top of
/// `pipeline.max_events_in_memory` while consumption is paused.
pub const SOURCE_CHANNEL_CAPACITY: usize = 4 * source::SOURCE_CHUNK;

/// How long the exit waits for the consumer thread to close the consumer
/// after the final commit.
const CONSUMER_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Counters a caller (the demo, tests) can read after the run.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub committed: Vec<(PartitionId, i64)>,
    pub unfinished_at_exit: usize,
}

/// Runs until `shutdown` resolves (then drains and commits) or a fatal error.
/// `reload` asks for the secret files to be re-read now (SIGHUP); they are
/// also re-read every `secrets.reload_interval_ms`.
pub async fn run(
    config: Config,
    api: Arc<dyn DeleteApi>,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
    reload: ReloadTrigger,
) -> Result<RunSummary, PipelineError> {
    let s = &config.settings;
    let producer: RecordProducer = producer_config(&config)
        .create_with_context(BrokerWatch::new(health.clone()))
        .map_err(PipelineError::KafkaConfig)?;
    let dead_letters = DeadLetterWriter::new(
        KafkaWriter::new(
            producer.clone(),
            "dead_letter",
            metrics.clone(),
            health.clone(),
        ),
        s.kafka.dlq_topic.clone(),
    );
    let (partition_counts_tx, partition_counts) = mpsc::unbounded_channel();
    let count_partitions = Arc::new(tokio::sync::Notify::new());
    {
        let (client, topics) = (producer.clone(), s.kafka.topics.clone());
        let retry = !topics.iter().any(|t| t.starts_with('^'));
        tokio::spawn(partition_count::count_on_request(
            Arc::new(move || {
                use rdkafka::producer::Producer;
                partition_count::partition_count(client.client(), &topics)
            }),
            retry,
            count_partitions.clone(),
            partition_counts_tx,
        ));
    }
    // A dry run writes nothing to Kafka, audit records included.
    let audit = match (&config.audit, s.api.dry_run) {
        (Some((topic, disclosure)), false) => Some(AuditWriter::new(
            KafkaWriter::new(producer, "audit", metrics.clone(), health.clone()),
            topic.clone(),
            disclosure.clone(),
        )),
        _ => None,
    };
    let accounts = config
        .regions
        .iter()
        .map(|r| (r.name.clone(), r.account_id.clone()))
        .collect();

    let (dispatcher, reports) = Dispatcher::new(
        api,
        &config.regions,
        DispatchSettings {
            max_concurrency: s.api.max_concurrency,
            backoff: Backoff {
                initial: Duration::from_millis(s.api.retry_initial_ms),
                max: Duration::from_millis(s.api.retry_max_ms),
            },
            auth_retry: Duration::from_millis(s.api.auth_retry_ms),
            unconfirmed_retries: s.api.unconfirmed_retries,
            log_ids: s.log.log_ids,
        },
        metrics.clone(),
        health.clone(),
    );
    // Each region's concurrency follows this replica's part of the group's
    // partitions from now on (nothing owned yet).
    dispatcher.share_budgets(&config.account_budgets());

    let (reloads_tx, reloads) = mpsc::unbounded_channel();
    // Spawned without files too, so that SIGHUP says there is nothing to re-read.
    let watcher = SecretWatcher::new(config.secret_files(), metrics.clone());
    let interval = match s.secrets.reload_interval_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    tokio::spawn(secret_reload::watch(watcher, interval, reload, reloads_tx));

    // The memory of what was deleted before this start is read back beside
    // the consumer, which is held (joined, paused) until it is in.
    let fingerprint = warm::decoding_fingerprint(&config);
    let warming = warm_start::enabled(&config);
    let (warmed_tx, warmed) = mpsc::unbounded_channel();
    if warming {
        let (config, fingerprint, metrics) = (config.clone(), fingerprint.clone(), metrics.clone());
        tokio::spawn(async move {
            let recalled = warm_start::recall(&config, &fingerprint, &metrics).await;
            let _ = warmed_tx.send(recalled);
        });
    }

    let intake_held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let warm_hold = Arc::new(std::sync::atomic::AtomicBool::new(warming));
    let (events_tx, events) = mpsc::channel(SOURCE_CHANNEL_CAPACITY / source::SOURCE_CHUNK);
    let drain_timeout = Duration::from_millis(s.pipeline.rebalance_drain_timeout_ms);
    let source = source::start(
        SourceSettings {
            client_config: consumer_config(&config),
            topics: s.kafka.topics.clone(),
            decoder: EventDecoder::new(&s.event, &config.regions),
            revoke_timeout: drain_timeout,
            intake_held: intake_held.clone(),
            fingerprint,
            warming: warm_hold.clone(),
        },
        events_tx,
        metrics.clone(),
        health.clone(),
    )
    .map_err(PipelineError::KafkaConfig)?;

    let (acks_tx, acks) = mpsc::unbounded_channel();
    let (audited_tx, audited) = mpsc::unbounded_channel();
    let ledger = Ledger::new(LedgerSettings {
        capacity: config.batch_capacity,
        linger: Duration::from_millis(s.batch.linger_ms),
        recent_capacity: s.dedup.recent_capacity,
        recent_ttl: Duration::from_secs(s.dedup.recent_ttl_secs),
        audit: config.audit.is_some() && !s.api.dry_run,
    });
    let max_events = s.pipeline.max_events_in_memory;
    let finished_counters =
        Finish::ALL.map(|f| metrics.events_finished.with_label_values(&[f.as_str()]));
    let mut coordinator = Coordinator {
        ledger,
        dispatcher,
        dead_letters,
        acks_tx,
        audit,
        audited_tx,
        accounts,
        commands: source.commands.clone(),
        metrics,
        health: health.clone(),
        paused: false,
        warming,
        warm_hold,
        finished_counters,
        intake_held,
        pause_at: max_events,
        resume_at: max_events / 2,
        revoking: RevokeQueue::default(),
        ownership: HashMap::new(),
        stopped: CancellationToken::new(),
        held_back_labelled: Vec::new(),
        drain_timeout,
        dry_run: s.api.dry_run,
        partitions_total: None,
        count_partitions,
        settling: Vec::new(),
    };
    let views = health.status_link().connect();
    let outcome = coordinator
        .run_loop(
            Inputs {
                events,
                reports,
                acks,
                audited,
                views,
                reloads,
                partition_counts,
                warmed,
            },
            shutdown,
            Duration::from_millis(s.pipeline.commit_interval_ms),
            Duration::from_millis(s.pipeline.shutdown_timeout_ms),
        )
        .await;

    // Revokes drained but waiting for a lowered share: answer them now.
    coordinator.settle_revokes(true);
    // Writes still retrying (a missing dead-letter topic, say) end here:
    // their events are not committed and will be redone.
    coordinator.stopped.cancel();
    // Final synchronous commit of what finished, then leave the group.
    let committed = if coordinator.dry_run {
        Vec::new()
    } else {
        coordinator.ledger.all_watermarks()
    };
    let unfinished_at_exit = coordinator.ledger.events_in_memory();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = source.commands.send(SourceCommand::Stop {
        final_commit: committed.clone(),
        done: done_tx,
    });
    if tokio::time::timeout(Duration::from_secs(30), done_rx)
        .await
        .is_err()
    {
        tracing::warn!("the consumer did not close within 30 s");
    }
    // Closing the consumer can wait on the group coordinator (librdkafka
    // polls until it is closed, with no bound). The final commit is made by
    // now, so a slow close is not worth holding the exit for.
    let joined = tokio::task::spawn_blocking(move || source.thread.join());
    if tokio::time::timeout(CONSUMER_CLOSE_WAIT, joined)
        .await
        .is_err()
    {
        tracing::warn!(
            wait_secs = CONSUMER_CLOSE_WAIT.as_secs(),
            "the consumer did not close in time; exiting without waiting (the final commit was made)"
        );
    }
    tracing::info!(
        unfinished_at_exit,
        partitions = committed.len(),
        "stopped; final offsets committed"
    );
    outcome.map(|()| RunSummary {
        committed,
        unfinished_at_exit,
    })
}

#[cfg(test)]
mod tests;
