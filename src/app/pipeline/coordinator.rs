//! The coordinator: the one task that owns the ledger, its select loop, and
//! its handlers for records, dispatch reports and acknowledgements.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::pipeline::warm_start::Recalled;
use crate::app::pipeline::PipelineError;
use crate::clevertap::dispatch::{DispatchReport, Dispatcher};
use crate::domain::batch::API_MAX_IDS;
use crate::domain::ids::RegionName;
use crate::domain::ledger::{
    merge_already_deleted, AuditDue, AuditStatus, EventId, Ledger, Progress,
};
use crate::domain::offsets::PartitionId;
use crate::domain::outcome::Finish;
use crate::domain::revokes::{PendingRevoke, RevokeQueue};
use crate::input::decode::DeadLetterReason;
use crate::input::source::{self, SourceCommand, SourceEvent, SourceRecord};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::ops::secret_reload::SecretUpdate;
use crate::output::audit::{build_records, AuditInput, AuditWriter};
use crate::output::dead_letter::DeadLetterWriter;
use crate::output::dead_letter::DeadLettered;

pub(super) struct Coordinator {
    pub(super) ledger: Ledger,
    pub(super) dispatcher: Dispatcher,
    pub(super) dead_letters: DeadLetterWriter,
    pub(super) acks_tx: mpsc::UnboundedSender<DeadLetterAck>,
    /// Set when audit records are on: a report is settled only once its
    /// audit record is acknowledged, so no offset is committed before it.
    pub(super) audit: Option<AuditWriter>,
    pub(super) audited_tx: mpsc::UnboundedSender<AuditAck>,
    pub(super) accounts: HashMap<RegionName, String>,
    pub(super) commands: std::sync::mpsc::Sender<SourceCommand>,
    pub(super) metrics: Metrics,
    pub(super) health: Health,
    pub(super) paused: bool,
    /// The dedup memory is being read back: intake stays held until it is in.
    pub(super) warming: bool,
    /// Shared with the consumer thread: set while `warming`.
    pub(super) warm_hold: Arc<std::sync::atomic::AtomicBool>,
    /// `events_finished_total` by outcome, looked up once (per-event path).
    pub(super) finished_counters: [prometheus::IntCounter; 4],
    /// Shared with the consumer thread: set while too many events are held.
    pub(super) intake_held: Arc<std::sync::atomic::AtomicBool>,
    pub(super) pause_at: usize,
    pub(super) resume_at: usize,
    pub(super) revoking: RevokeQueue,
    /// One token per owned partition, cancelled when its ownership ends; all
    /// are children of `stopped`, cancelled when the pipeline returns.
    pub(super) ownership: HashMap<PartitionId, CancellationToken>,
    pub(super) stopped: CancellationToken,
    /// Partitions with an `offsets_held_back` series.
    pub(super) held_back_labelled: Vec<PartitionId>,
    pub(super) drain_timeout: Duration,
    /// Dry run: no offset is committed and nothing is written to the
    /// dead-letter topic, so a later real run redoes everything.
    pub(super) dry_run: bool,
    /// Partitions of the subscribed topics, once read from the brokers.
    pub(super) partitions_total: Option<usize>,
    /// Asks for the partition count to be read again (after an assignment).
    pub(super) count_partitions: Arc<tokio::sync::Notify>,
    /// Revokes whose partitions drained, waiting for the requests in flight
    /// to fit this replica's lowered share before the consumer is answered
    /// (only then can another replica get the partitions and its larger
    /// share): so the replicas' requests never add up above the budget.
    pub(super) settling: Vec<Settling>,
}

/// A revoke's answer held back until the requests in flight fit the shares
/// (see `shares`).
pub(super) struct Settling {
    pub(super) reply: std::sync::mpsc::SyncSender<Vec<(PartitionId, i64)>>,
    pub(super) marks: Vec<(PartitionId, i64)>,
    pub(super) deadline: Instant,
}

/// How often a waiting revoke looks at the requests in flight again.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// The audit topic acknowledged every record of one request.
pub(super) struct AuditAck {
    events: Vec<EventId>,
    status: AuditStatus,
    records: u64,
}

/// The dead-letter topic acknowledged an event's record.
pub(super) struct DeadLetterAck {
    event: EventId,
    reason: DeadLetterReason,
    how: DeadLettered,
}

/// Everything the coordinator receives: records from the source, dispatch
/// reports, dead-letter acknowledgements, audited reports.
pub(super) struct Inputs {
    pub(super) events: mpsc::Receiver<SourceEvent>,
    pub(super) reports: mpsc::UnboundedReceiver<DispatchReport>,
    pub(super) acks: mpsc::UnboundedReceiver<DeadLetterAck>,
    pub(super) audited: mpsc::UnboundedReceiver<AuditAck>,
    /// Status requests from the HTTP server.
    pub(super) views: mpsc::Receiver<crate::ops::status::ViewRequest>,
    /// Secrets re-read from their files.
    pub(super) reloads: mpsc::UnboundedReceiver<SecretUpdate>,
    /// Partitions of the subscribed topics, read after assignments.
    pub(super) partition_counts: mpsc::UnboundedReceiver<usize>,
    /// The deletions read back at start (always sent once, empty on failure).
    pub(super) warmed: mpsc::UnboundedReceiver<Recalled>,
}

impl Coordinator {
    pub(super) async fn run_loop(
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
            mut reloads,
            mut partition_counts,
            mut warmed,
        } = inputs;
        tokio::pin!(shutdown);
        let mut commit_tick = tokio::time::interval(commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_deadline: Option<Instant> = None;
        // A kill -9 redoes every finished event above the last commit: up to
        // 4,500 such events per kill with a 200 ms cadence in e2e test 2.
        // Commits are checked after every turn, at most once per interval,
        // because the select below is biased towards reports and events and
        // could starve a tick under a steady stream; the tick only wakes an
        // idle loop (a failed commit is asked for again then, even on an
        // idle partition).
        let mut last_commit = Instant::now();
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
                // Requests finishing bring the count under a lowered share.
                _ = tokio::time::sleep(SETTLE_POLL), if !self.settling.is_empty() => {}
                Some(update) = reloads.recv() => self.on_reload(update),
                Some(total) = partition_counts.recv() => self.on_partition_count(total),
                Some(recalled) = warmed.recv(), if self.warming => self.on_warmed(recalled),
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or(far).into()), if stop_deadline.is_some() => {}
                Some(reply) = views.recv() => {
                    let _ = reply.send(crate::ops::status::PipelineView {
                        events_in_memory: self.ledger.events_in_memory(),
                        consumer_paused: self.paused,
                        partitions: self.ledger.partition_views(Instant::now()),
                        regions: self.dispatcher.region_views(),
                    });
                }
                _ = commit_tick.tick() => {}
            }
            if last_commit.elapsed() >= commit_interval {
                last_commit = Instant::now();
                // The tick falls due only after a whole quiet interval.
                commit_tick.reset();
                self.commit();
                self.update_gauges();
            }
            self.finish_revoke_if_drained();
            self.settle_revokes(false);
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
                    if stopping || !self.ledger.owns(r.partition()) {
                        continue;
                    }
                    match r {
                        SourceRecord::Message {
                            partition,
                            offset,
                            record,
                            decoded,
                        } => self.ledger.admit_into(
                            &partition,
                            offset,
                            record,
                            decoded,
                            now,
                            &mut progress,
                        ),
                        SourceRecord::Skipped {
                            partition,
                            first,
                            last,
                        } => self.ledger.skip_run(&partition, first, last, &mut progress),
                    }
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
                // The partitions' former owners lowered their shares before
                // they gave them up: this replica's share may grow now.
                self.update_shares();
                self.count_partitions.notify_one();
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
        self.metrics
            .dead_letters_found_written
            .inc_by(progress.dead_letters_found_written);
        for batch in progress.batches {
            self.dispatcher.dispatch(batch);
        }
        for outcome in progress.finished {
            self.finished_counters[outcome as usize].inc();
        }
        self.finished_counters[Finish::Skipped as usize].inc_by(progress.skipped);
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
}

impl Coordinator {
    /// The start-up read-back (see `warm_start`) ended, empty on failure:
    /// remember, then read.
    pub(super) fn on_warmed(&mut self, recalled: Recalled) {
        self.ledger.remember_deleted(recalled.deletions);
        self.ledger.remember_dead_lettered(recalled.dead_letters);
        self.warming = false;
        self.warm_hold
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
