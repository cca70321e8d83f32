//! `replay-dlq`: moves dead letters back to a source topic once their cause is
//! fixed. Consume-transform-produce in Kafka transactions: the replayed records
//! of a chunk and the replay group's offsets on the dead-letter topic commit
//! together, so a crash neither duplicates nor skips a replay.
//!
//! The decision per record ([`parse_headers`], [`decide`]) is pure; [`run`]
//! does the Kafka side.
//!
//! By role: `decide` (pure), `reading` (the consumer side), `writing` (the
//! transactional producer); this file runs them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;

use crate::config::Config;

mod decide;
mod reading;
mod writing;

pub use decide::{
    decide, default_group, headers, parse_headers, validate_reasons, Counts, DeadLetterHeaders,
    Decision, Policy, Refusal, ReplayOptions, ReplaySummary, StopCause, Tally,
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_MAX_REPLAYS,
};
pub use reading::replay_consumer_config;
pub use writing::replay_producer_config;

use reading::{
    check_reachable, consumer_error, rebalanced, DlqRecord, ReplayConsumer, ReplayContext,
    ReplayProducer,
};
use writing::{retrying, Replayer, CHUNK_RECORDS, TXN_TIMEOUT};

const POLL: Duration = Duration::from_millis(200);

/// How long to wait for the group to assign the dead-letter partitions.
const ASSIGNMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// With partitions assigned, neither a record nor an end-of-partition event
/// for this long means the brokers are unreachable.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Bad options or Kafka client settings: exit code 2.
    #[error("{0}")]
    Config(String),
    /// A Kafka failure: the open transaction was aborted; `done` holds what
    /// was committed before. Exit code 1.
    #[error("{message}")]
    Kafka {
        message: String,
        done: Box<ReplaySummary>,
    },
}

impl Replayer<'_> {
    fn replay_loop(&mut self, consumer: &ReplayConsumer) -> Result<StopCause, String> {
        let dlq_topic = self.policy.dlq_topic.clone();
        let started = Instant::now();
        let mut last_activity = Instant::now();
        let mut at_eof: HashSet<i32> = HashSet::new();
        let mut assignment: Option<BTreeSet<i32>> = None;
        loop {
            let mut look = false;
            match consumer.poll(POLL) {
                None => look = true,
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_eof.insert(partition);
                    last_activity = Instant::now();
                    look = true;
                }
                Some(Err(e)) => consumer_error(e, &dlq_topic)?,
                Some(Ok(m)) => {
                    last_activity = Instant::now();
                    let record = DlqRecord::from_message(&m);
                    drop(m);
                    at_eof.remove(&record.partition);
                    if self.handle(record)? {
                        self.commit(consumer)?;
                        return Ok(StopCause::Limit);
                    }
                    if self.chunk_len() >= CHUNK_RECORDS as u64 {
                        self.commit(consumer)?;
                    }
                }
            }
            if !look {
                continue;
            }
            // Idle or at a partition's end: commit what is open, so a quiet
            // moment never keeps a transaction open for long.
            self.commit(consumer)?;
            // rd_kafka_assignment is a round trip to librdkafka's group
            // thread, so it is asked only here, not per record.
            let current: BTreeSet<i32> = consumer
                .assignment()
                .map_err(|e| format!("reading the assignment: {e}"))?
                .elements()
                .iter()
                .filter(|e| e.topic() == dlq_topic)
                .map(|e| e.partition())
                .collect();
            if current.is_empty() {
                if assignment.is_some() {
                    return Err(rebalanced());
                }
                if started.elapsed() >= ASSIGNMENT_TIMEOUT {
                    return Err(format!(
                        "no partition of {dlq_topic} was assigned within {} s (does the topic exist? \
                         does another replay-dlq run with this group?)",
                        ASSIGNMENT_TIMEOUT.as_secs()
                    ));
                }
                continue;
            }
            match &assignment {
                None => {
                    tracing::info!(partitions = ?current, "dead-letter partitions assigned");
                    assignment = Some(current.clone());
                }
                // Another member joined: what this run holds is no longer
                // certain. Stop; a new run resumes from the committed position.
                Some(first) if *first != current => return Err(rebalanced()),
                Some(_) => {}
            }
            if current.iter().all(|p| at_eof.contains(p)) {
                return Ok(StopCause::EndOfTopic);
            }
            if last_activity.elapsed() >= IDLE_TIMEOUT {
                return Err(format!(
                    "nothing read from {dlq_topic} for {} s before its end",
                    IDLE_TIMEOUT.as_secs()
                ));
            }
        }
    }
}

/// Replays the dead-letter topic from the group's committed position to its
/// end (or `--limit`). Dry-run listing lines go to `out`; the caller prints
/// the summary.
pub fn run(
    config: &Config,
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplaySummary, ReplayError> {
    let dlq_topic = config.settings.kafka.dlq_topic.clone();
    let reasons = validate_reasons(&options.reasons).map_err(ReplayError::Config)?;
    if options.max_replays == 0 {
        return Err(ReplayError::Config(
            "--max-replays must be at least 1".into(),
        ));
    }
    if options.limit == Some(0) {
        return Err(ReplayError::Config("--limit must be at least 1".into()));
    }
    if let Some(to) = &options.to {
        if to.trim().is_empty() || *to == dlq_topic {
            return Err(ReplayError::Config(format!(
                "--to `{to}` must name a topic other than the dead-letter topic"
            )));
        }
    }
    let group = match &options.group {
        Some(g) if g.trim().is_empty() => {
            return Err(ReplayError::Config("--group must not be empty".into()))
        }
        Some(g) => g.clone(),
        None => default_group(&config.settings.kafka.group_id, &reasons),
    };
    let mut summary = ReplaySummary {
        dlq_topic: dlq_topic.clone(),
        group: group.clone(),
        dry_run: options.dry_run,
        max_replays: options.max_replays,
        counts: Tally::default(),
        stop: StopCause::Failed,
    };
    let kafka_error = |message: String, summary: &ReplaySummary| ReplayError::Kafka {
        message,
        done: Box::new(summary.clone()),
    };

    let consumer: ReplayConsumer = replay_consumer_config(config, &group)
        .create_with_context(ReplayContext::new("replay consumer"))
        .map_err(|e| ReplayError::Config(config.settings.kafka.client_error(&e).to_string()))?;
    check_reachable(
        &consumer,
        config,
        Duration::from_secs(options.connect_timeout.max(1)),
    )
    .map_err(|m| kafka_error(m, &summary))?;
    let producer: Option<ReplayProducer> = if options.dry_run {
        // No producer at all: a dry run must not fence a real replay either.
        None
    } else {
        let producer: ReplayProducer = replay_producer_config(config, &group)
            .create_with_context(ReplayContext::new("replay producer"))
            .map_err(|e| ReplayError::Config(config.settings.kafka.client_error(&e).to_string()))?;
        // Before reading the position: this aborts a transaction a crashed
        // run left open, so the committed offsets are final.
        retrying("initializing transactions", || {
            producer.init_transactions(TXN_TIMEOUT)
        })
        .map_err(|m| kafka_error(m, &summary))?;
        Some(producer)
    };
    consumer
        .subscribe(&[dlq_topic.as_str()])
        .map_err(|e| kafka_error(format!("subscribing to {dlq_topic}: {e}"), &summary))?;
    tracing::info!(
        dlq_topic = %dlq_topic, group = %group, dry_run = options.dry_run,
        "replaying dead letters"
    );

    let mut replayer = Replayer {
        policy: Policy {
            reasons,
            max_replays: options.max_replays,
            to: options.to.clone(),
            dlq_topic,
        },
        limit: options.limit,
        producer,
        out,
        committed: Tally::default(),
        chunk: Tally::default(),
        chunk_offsets: BTreeMap::new(),
        in_transaction: false,
    };
    let outcome = replayer.replay_loop(&consumer);
    summary.counts = replayer.committed.clone();
    match outcome {
        Ok(stop) => {
            summary.stop = stop;
            Ok(summary)
        }
        Err(message) => {
            if let (Some(producer), true) = (&replayer.producer, replayer.in_transaction) {
                // Neither its records nor its offsets become visible.
                if let Err(e) = producer.abort_transaction(TXN_TIMEOUT) {
                    tracing::error!(error = %e, "aborting the replay transaction failed; the next run's start aborts it");
                }
            }
            Err(kafka_error(message, &summary))
        }
    }
}

/// `replay-dlq` as the command line runs it: exit 0 on success, 2 on a
/// configuration error, 1 on a Kafka error.
pub fn main(config: &Config, options: &ReplayOptions) -> ExitCode {
    crate::ops::logging::init(&config.settings.log.format, &config.settings.log.level);
    crate::ops::logging::log_warnings(config);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(config, options, &mut out) {
        Ok(summary) => {
            let _ = write!(out, "{summary}");
            ExitCode::SUCCESS
        }
        Err(ReplayError::Config(message)) => {
            eprintln!("clevertap-deleter replay-dlq: {message}");
            ExitCode::from(crate::app::exit_code::EXIT_CONFIG)
        }
        Err(ReplayError::Kafka { message, done }) => {
            let _ = write!(out, "{done}");
            let _ = out.flush();
            eprintln!("clevertap-deleter replay-dlq: {message}");
            ExitCode::from(crate::app::exit_code::EXIT_FATAL)
        }
    }
}

// For the unit tests in `replay/tests.rs`, which see this module's names.
#[cfg(test)]
use reading::NO_REASON;

#[cfg(test)]
mod tests;
