//! Wires the stages together and runs the coordinator loop:
//! source -> ledger (dedup, batches, offsets) -> dispatcher -> acks -> commits.
//! The coordinator owns the ledger alone, so the core needs no locks.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;

use crate::clevertap::api::DeleteApi;
use crate::clevertap::dispatch::{DispatchReport, DispatchSettings, Dispatcher};
use crate::config::Config;
use crate::domain::backoff::Backoff;
use crate::domain::batch::API_MAX_IDS;
use crate::domain::ids::RegionName;
use crate::domain::ledger::{
    merge_already_deleted, AuditDue, AuditStatus, EventId, Finish, Ledger, LedgerSettings, Progress,
};
use crate::domain::offsets::PartitionId;
use crate::domain::revokes::{DueRevoke, PendingRevoke, RevokeQueue};
use crate::input::decode::{DeadLetterReason, EventDecoder};
use crate::input::source::{self, SourceCommand, SourceEvent, SourceSettings};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::output::audit::{build_records, AuditInput, AuditWriter};
use crate::output::dead_letter::DeadLetterWriter;
use crate::output::dead_letter::DeadLettered;
use crate::output::produce::{BrokerWatch, KafkaWriter, RecordProducer};

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

/// The librdkafka settings the consumer uses: ours, then the user's properties.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let k = &config.settings.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("group.id", &k.group_id)
        .set("client.id", "clevertap-deleter")
        // Offsets are committed only by the pipeline, after deletion.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group must not skip deletions produced before it first ran.
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        // Bound librdkafka's prefetch so memory stays flat while paused.
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "20000")
        // When the prefetch bound is hit, librdkafka waits this long before
        // fetching again (default 1000 ms): with a bound this small that wait,
        // not the broker, would set the pace.
        .set("fetch.queue.backoff.ms", "20");
    if let Some(id) = &k.group_instance_id {
        c.set("group.instance.id", id);
    }
    for (key, value) in &k.properties {
        c.set(key, value);
    }
    c
}

/// The librdkafka settings of the dead-letter producer.
pub fn producer_config(config: &Config) -> ClientConfig {
    let k = &config.settings.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", "clevertap-deleter-dlq")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // Its statistics tell readiness the cluster is back (see BrokerWatch).
        .set("statistics.interval.ms", "5000");
    for (key, value) in &k.properties {
        if !is_consumer_only(key) {
            c.set(key, value);
        }
    }
    c
}

/// Collects what librdkafka says while a client is built offline, so
/// nothing reaches the log.
#[derive(Default)]
struct OfflineContext {
    warnings: std::sync::Mutex<Vec<String>>,
}

impl rdkafka::ClientContext for OfflineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        // Configuration warnings (CONFWARN) are worth showing; nothing else
        // can happen without brokers.
        use rdkafka::config::RDKafkaLogLevel as L;
        let serious = matches!(
            level,
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning
        );
        if serious && fac == "CONFWARN" {
            self.warnings
                .lock()
                .expect("warnings lock")
                .push(crate::ops::log_throttle::without_thread(message).to_string());
        }
    }

    fn error(&self, _error: rdkafka::error::KafkaError, _reason: &str) {}
}

impl rdkafka::consumer::ConsumerContext for OfflineContext {}

impl rdkafka::producer::ProducerContext for OfflineContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Builds the consumer and the dead-letter producer from the configuration
/// and drops them at once, without brokers (`bootstrap.servers` removed), so
/// nothing connects: librdkafka checks every property name and value, the
/// SASL mechanism and the TLS files as `run` would. Returns librdkafka's
/// configuration warnings. Errors name the property and never show a secret.
pub fn check_clients_offline(config: &Config) -> Result<Vec<String>, crate::config::ConfigError> {
    let kafka = &config.settings.kafka;
    let offline = |mut c: ClientConfig| {
        c.remove("bootstrap.servers").remove("metadata.broker.list");
        c
    };
    let consumer_context = OfflineContext::default();
    let consumer: rdkafka::consumer::BaseConsumer<OfflineContext> =
        offline(consumer_config(config))
            .create_with_context(consumer_context)
            .map_err(|e| kafka.client_error(&e))?;
    let producer: rdkafka::producer::BaseProducer<OfflineContext> =
        offline(producer_config(config))
            .create_with_context(OfflineContext::default())
            .map_err(|e| kafka.client_error(&e))?;
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::Producer;
    // Log lines come through the clients' queues: serve them.
    let _ = consumer.poll(Duration::ZERO);
    producer.poll(Duration::ZERO);
    let mut warnings: Vec<String> = Vec::new();
    for context in [consumer.context(), producer.context()] {
        for w in context.warnings.lock().expect("warnings lock").iter() {
            let w = format!("librdkafka: {}", kafka.redact(w));
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    drop(consumer);
    drop(producer);
    Ok(warnings)
}

fn is_consumer_only(key: &str) -> bool {
    key.starts_with("group.")
        || key.starts_with("partition.assignment")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("fetch.")
        || key.starts_with("queued.")
        || key.starts_with("max.poll")
        || key == "isolation.level"
        || key == "enable.partition.eof"
        || key == "check.crcs"
}

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
pub async fn run(
    config: Config,
    api: Arc<dyn DeleteApi>,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
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

    let intake_held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel(SOURCE_CHANNEL_CAPACITY / source::SOURCE_CHUNK);
    let drain_timeout = Duration::from_millis(s.pipeline.rebalance_drain_timeout_ms);
    let source = source::start(
        SourceSettings {
            client_config: consumer_config(&config),
            topics: s.kafka.topics.clone(),
            decoder: EventDecoder::new(&s.event, &config.regions),
            revoke_timeout: drain_timeout,
            intake_held: intake_held.clone(),
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
            },
            shutdown,
            Duration::from_millis(s.pipeline.commit_interval_ms),
            Duration::from_millis(s.pipeline.shutdown_timeout_ms),
        )
        .await;

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

struct Coordinator {
    ledger: Ledger,
    dispatcher: Dispatcher,
    dead_letters: DeadLetterWriter,
    acks_tx: mpsc::UnboundedSender<DeadLetterAck>,
    /// Set when audit records are on: a report is settled only once its
    /// audit record is acknowledged, so no offset is committed before it.
    audit: Option<AuditWriter>,
    audited_tx: mpsc::UnboundedSender<AuditAck>,
    accounts: HashMap<RegionName, String>,
    commands: std::sync::mpsc::Sender<SourceCommand>,
    metrics: Metrics,
    health: Health,
    paused: bool,
    /// `events_finished_total` by outcome, looked up once (per-event path).
    finished_counters: [prometheus::IntCounter; 4],
    /// Shared with the consumer thread: set while too many events are held.
    intake_held: Arc<std::sync::atomic::AtomicBool>,
    pause_at: usize,
    resume_at: usize,
    revoking: RevokeQueue,
    /// One token per owned partition, cancelled when its ownership ends; all
    /// are children of `stopped`, cancelled when the pipeline returns.
    ownership: HashMap<PartitionId, CancellationToken>,
    stopped: CancellationToken,
    /// Partitions with an `offsets_held_back` series.
    held_back_labelled: Vec<PartitionId>,
    drain_timeout: Duration,
    /// Dry run: no offset is committed and nothing is written to the
    /// dead-letter topic, so a later real run redoes everything.
    dry_run: bool,
}

/// The audit topic acknowledged every record of one request.
struct AuditAck {
    events: Vec<EventId>,
    status: AuditStatus,
    records: u64,
}

/// The dead-letter topic acknowledged an event's record.
struct DeadLetterAck {
    event: EventId,
    reason: DeadLetterReason,
    how: DeadLettered,
}

/// Everything the coordinator receives: records from the source, dispatch
/// reports, dead-letter acknowledgements, audited reports.
struct Inputs {
    events: mpsc::Receiver<SourceEvent>,
    reports: mpsc::UnboundedReceiver<DispatchReport>,
    acks: mpsc::UnboundedReceiver<DeadLetterAck>,
    audited: mpsc::UnboundedReceiver<AuditAck>,
    /// Status requests from the HTTP server.
    views: mpsc::Receiver<crate::ops::status::ViewRequest>,
}

impl Coordinator {
    async fn run_loop(
        &mut self,
        inputs: Inputs,
        shutdown: impl Future<Output = ()>,
        commit_interval: Duration,
        shutdown_timeout: Duration,
    ) -> Result<(), PipelineError> {
        let Inputs {
            mut events,
            mut reports,
            mut acks,
            mut audited,
            mut views,
        } = inputs;
        tokio::pin!(shutdown);
        let mut commit_tick = tokio::time::interval(commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_deadline: Option<Instant> = None;
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let batch_deadline = self.ledger.next_batch_deadline();
            let revoke_deadline = self.revoking.next_deadline();
            tokio::select! {
                biased;
                _ = &mut shutdown, if stop_deadline.is_none() => {
                    tracing::info!("shutdown requested: no new events; draining in-flight deletions");
                    self.health.set_stopping();
                    let _ = self.commands.send(SourceCommand::Pause);
                    stop_deadline = Some(Instant::now() + shutdown_timeout);
                    for batch in self.ledger.take_all_batches() {
                        self.dispatcher.dispatch(batch);
                    }
                }
                Some(report) = reports.recv() => self.on_report(report),
                Some(ack) = audited.recv() => {
                    self.metrics
                        .audit_records
                        .with_label_values(&[ack.status.as_str()])
                        .inc_by(ack.records);
                    let progress = self.ledger.audited(&ack.events);
                    self.apply(progress);
                }
                Some(ack) = acks.recv() => {
                    let progress = self.ledger.dead_lettered(ack.event);
                    if !progress.finished.is_empty() {
                        self.metrics.dead_letters.with_label_values(&[ack.reason.as_str()]).inc();
                        if ack.how == DeadLettered::Truncated {
                            self.metrics.dead_letters_truncated.inc();
                        }
                    }
                    self.apply(progress);
                }
                event = events.recv() => match event {
                    Some(event) => self.on_source(event, stop_deadline.is_some())?,
                    None => return Err(PipelineError::Fatal("the Kafka consumer thread ended".into())),
                },
                _ = tokio::time::sleep_until(batch_deadline.unwrap_or(far).into()), if batch_deadline.is_some() && stop_deadline.is_none() => {
                    let dispatcher = &self.dispatcher;
                    let due = self.ledger.take_due_batches(Instant::now(), |r| dispatcher.is_saturated(r));
                    for batch in due {
                        self.dispatcher.dispatch(batch);
                    }
                }
                _ = tokio::time::sleep_until(revoke_deadline.unwrap_or(far).into()), if revoke_deadline.is_some() => {}
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or(far).into()), if stop_deadline.is_some() => {}
                Some(reply) = views.recv() => {
                    let _ = reply.send(crate::ops::status::PipelineView {
                        events_in_memory: self.ledger.events_in_memory(),
                        consumer_paused: self.paused,
                        partitions: self.ledger.partition_views(Instant::now()),
                        regions: self.dispatcher.region_views(),
                    });
                }
                _ = commit_tick.tick() => {
                    self.commit();
                    self.update_gauges();
                }
            }
            self.finish_revoke_if_drained();
            self.apply_backpressure(stop_deadline.is_some(), events.len() * source::SOURCE_CHUNK);
            if let Some(deadline) = stop_deadline {
                let in_memory = self.ledger.events_in_memory();
                if in_memory == 0 || Instant::now() >= deadline {
                    if in_memory > 0 {
                        tracing::warn!(
                            in_memory,
                            "shutdown deadline reached with unfinished events; they are not committed and will be redone"
                        );
                    }
                    self.update_gauges();
                    return Ok(());
                }
            }
        }
    }

    /// A deletion request finished. With audit on, the events it covers
    /// finish once its audit record is acknowledged (see `apply`).
    fn on_report(&mut self, report: DispatchReport) {
        let (mut progress, attempts) = match report {
            DispatchReport::Deleted { batch, attempts } => {
                (self.ledger.deleted(&batch, Instant::now()), attempts)
            }
            DispatchReport::Rejected {
                region,
                kind,
                id,
                reason,
                message,
                attempts,
            } => (
                self.ledger.rejected(&region, kind, &id, reason, &message),
                attempts,
            ),
        };
        for audit in &mut progress.audits {
            audit.attempts = attempts;
        }
        self.apply(progress);
    }

    /// Writes the audit records of `audits`; each acknowledgement releases
    /// the events it names.
    fn write_audits(&mut self, audits: Vec<AuditDue>) {
        let Some(writer) = self.audit.clone() else {
            // Audit off: the ledger asks for none (a dry run included).
            return;
        };
        let now = SystemTime::now();
        for due in merge_already_deleted(audits, API_MAX_IDS) {
            let records = build_records(
                AuditInput {
                    region: &due.region,
                    account_id: self.accounts.get(&due.region).map_or("", String::as_str),
                    kind: due.kind,
                    ids: &due.ids,
                    status: due.status,
                    message: due.message.as_deref(),
                    attempts: due.attempts,
                    sources: due.sources,
                },
                &writer.disclosure,
                now,
            );
            let writer = writer.clone();
            let audited = self.audited_tx.clone();
            let cancel = self.stopped.clone();
            let (events, status) = (due.events, due.status);
            tokio::spawn(async move {
                for record in &records {
                    if !writer.write(record, &cancel).await {
                        return;
                    }
                }
                let _ = audited.send(AuditAck {
                    events,
                    status,
                    records: records.len() as u64,
                });
            });
        }
    }

    fn on_source(&mut self, event: SourceEvent, stopping: bool) -> Result<(), PipelineError> {
        match event {
            SourceEvent::Records(records) => {
                let now = Instant::now();
                let mut progress = Progress::default();
                for r in records {
                    // Stale records (their partition was revoked meanwhile) and
                    // records read while stopping are left for the next owner.
                    if stopping || !self.ledger.owns(&r.partition) {
                        continue;
                    }
                    self.ledger.admit_into(
                        &r.partition,
                        r.offset,
                        r.record,
                        r.decoded,
                        now,
                        &mut progress,
                    );
                }
                self.apply(progress);
            }
            SourceEvent::Assigned {
                partitions,
                generation,
            } => {
                // A partition given back while its old revoke was still
                // draining: the consumer gave up on that revoke, so the old
                // ownership's events are forgotten before the new one starts.
                if let Some(stale) = self.revoking.superseded_by(generation, &partitions) {
                    tracing::warn!(
                        count = stale.partitions.len(),
                        generation,
                        "partitions assigned again before their revoke finished; their old events are left to be read again"
                    );
                    self.answer_revoke(stale);
                }
                for p in partitions {
                    self.ownership
                        .entry(p.clone())
                        .or_insert_with(|| self.stopped.child_token());
                    self.ledger.assign(p);
                }
            }
            SourceEvent::Revoked {
                partitions,
                generation,
                reply,
            } => {
                // Close every open batch so the revoked events can finish.
                for batch in self.ledger.take_all_batches() {
                    self.dispatcher.dispatch(batch);
                }
                self.revoking.push(PendingRevoke {
                    generation,
                    partitions,
                    reply,
                    deadline: Instant::now() + self.drain_timeout,
                });
            }
            SourceEvent::Committed { marks, ok } => {
                for (p, offset) in &marks {
                    self.ledger.commit_result(p, *offset, ok);
                }
            }
            SourceEvent::Fatal(reason) => return Err(PipelineError::Fatal(reason)),
        }
        Ok(())
    }

    fn apply(&mut self, progress: Progress) {
        self.metrics.late_acks_dropped.inc_by(progress.late_acks);
        self.metrics.redelivered_events.inc_by(progress.redelivered);
        for batch in progress.batches {
            self.dispatcher.dispatch(batch);
        }
        for outcome in progress.finished {
            self.finished_counters[outcome as usize].inc();
        }
        if !progress.deleted_timestamps_ms.is_empty() {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let h = &self.metrics.event_to_deletion;
            for ts in progress.deleted_timestamps_ms {
                h.observe((now_ms - ts).max(0) as f64 / 1000.0);
            }
        }
        if !progress.audits.is_empty() {
            self.write_audits(progress.audits);
        }
        for order in progress.dead_letters {
            if self.dry_run {
                tracing::info!(
                    reason = order.rejection.reason.as_str(),
                    partition = order.source.partition,
                    offset = order.offset,
                    "dry run: would dead-letter"
                );
                let _ = self.acks_tx.send(DeadLetterAck {
                    event: order.event,
                    reason: order.rejection.reason,
                    how: DeadLettered::Whole,
                });
                continue;
            }
            let writer = self.dead_letters.clone();
            let acks = self.acks_tx.clone();
            // Ends with the partition's ownership: a write held by a missing
            // topic must not outlive it (the new owner redoes the event).
            let cancel = self.ownership_token(&order.source);
            tokio::spawn(async move {
                if let Some(how) = writer.write(&order, &cancel).await {
                    let _ = acks.send(DeadLetterAck {
                        event: order.event,
                        reason: order.rejection.reason,
                        how,
                    });
                }
            });
        }
    }

    fn finish_revoke_if_drained(&mut self) {
        if self.revoking.is_empty() {
            return;
        }
        let ledger = &self.ledger;
        let due = self
            .revoking
            .take_due(Instant::now(), |ps| ledger.unfinished_in(ps));
        for revoke in due {
            self.answer_revoke(revoke);
        }
    }

    /// Forgets the revoked partitions and sends their watermarks to the
    /// consumer, which commits them before giving the partitions up.
    fn answer_revoke(&mut self, revoke: DueRevoke) {
        if revoke.timed_out {
            tracing::warn!(
                unfinished = self.ledger.unfinished_in(&revoke.partitions),
                generation = revoke.generation,
                "revoke drain timeout: committing the watermark below the unfinished events"
            );
        }
        let marks = self.ledger.revoke(&revoke.partitions);
        for p in &revoke.partitions {
            if let Some(token) = self.ownership.remove(p) {
                token.cancel();
            }
        }
        if let Some(reply) = revoke.reply {
            let _ = reply.send(if self.dry_run { Vec::new() } else { marks });
        }
    }

    /// The token that ends with this member's ownership of `partition`.
    fn ownership_token(&mut self, partition: &PartitionId) -> CancellationToken {
        self.ownership
            .entry(partition.clone())
            .or_insert_with(|| self.stopped.child_token())
            .clone()
    }

    fn commit(&mut self) {
        let marks = self.ledger.take_commits();
        if !marks.is_empty() && !self.dry_run {
            let _ = self.commands.send(SourceCommand::Commit(marks));
        }
    }

    /// `queued`: records decoded and waiting in the channel, counted too so
    /// the pause comes before they are admitted.
    fn apply_backpressure(&mut self, stopping: bool, queued: usize) {
        if stopping {
            return;
        }
        let held = self.ledger.events_in_memory() + queued;
        let hold = if !self.paused && held >= self.pause_at {
            tracing::debug!(held, "too many events in memory: holding consumption");
            true
        } else if self.paused && held <= self.resume_at {
            tracing::debug!(held, "events drained: resuming consumption");
            false
        } else {
            return;
        };
        self.paused = hold;
        self.intake_held
            .store(hold, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_gauges(&mut self) {
        self.metrics
            .events_in_memory
            .set(self.ledger.events_in_memory() as i64);
        // Per owned partition; series of partitions no longer owned go away.
        let gauge = &self.metrics.offsets_held_back;
        let mut labelled = std::mem::take(&mut self.held_back_labelled);
        let mut now_labelled = Vec::new();
        for (p, held) in self.ledger.held_back() {
            let partition = p.partition.to_string();
            gauge
                .with_label_values(&[&*p.topic, partition.as_str()])
                .set(held);
            labelled.retain(|q| q != p);
            now_labelled.push(p.clone());
        }
        for gone in labelled {
            let _ = gauge.remove_label_values(&[&*gone.topic, gone.partition.to_string().as_str()]);
        }
        self.held_back_labelled = now_labelled;
        let age = self
            .ledger
            .oldest_admitted()
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.metrics.oldest_unfinished_age.set(age);
    }
}

#[cfg(test)]
mod tests;
