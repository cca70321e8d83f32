//! Deciding, without Kafka: the command's options, the headers read off a dead
//! letter, what to do with it (replay, skip, refuse) and the tally of it all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::input::decode::DeadLetterReason;
use crate::output::dead_letter::headers as dlq;

/// Headers the replay adds to each replayed record.
pub mod headers {
    /// How often the record was replayed, this replay included.
    pub const REPLAY_COUNT: &str = "replay_count";
    /// `<dead-letter topic>/<partition>/<offset>` of the record it came from.
    pub const REPLAYED_FROM: &str = "replayed_from";
    /// The `reason` header of that dead-letter record.
    pub const REPLAYED_REASON: &str = "replayed_reason";
}

pub const DEFAULT_MAX_REPLAYS: u32 = 3;
/// How long `replay-dlq` waits for the brokers before it gives up (exit 1).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 30;

/// Options of `clevertap-deleter replay-dlq`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayOptions {
    /// Replay only dead letters with this `reason` header (repeatable).
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,
    /// Stop after replaying this many records.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// List what would be replayed or refused; produce and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse records whose `replay_count` header is at least this.
    #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replays: u32,
    /// Consumer group that keeps the replay's position on the dead-letter topic
    /// [default: {kafka.group_id}-replay, plus -{reasons joined by +} when filtered].
    #[arg(long, value_name = "ID")]
    pub group: Option<String>,
    /// Produce to this topic instead of each record's `source_topic` header.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Give up (exit 1) when the brokers do not answer within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_CONNECT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            reasons: Vec::new(),
            limit: None,
            dry_run: false,
            max_replays: DEFAULT_MAX_REPLAYS,
            group: None,
            to: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT_SECS,
        }
    }
}

/// What the replay reads from a dead-letter record's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub source_topic: Option<String>,
    /// 0 when the header is absent; `Err(raw value)` when it is not a number.
    pub replay_count: Result<u32, String>,
}

/// A source record's own headers, replayed with it: (key, value; `None` a
/// null value).
pub type OriginalHeaders = Vec<(String, Option<Vec<u8>>)>;

/// The source record's own headers at the start of a dead letter (their
/// number is its `original_header_count` header), without the replay's own
/// headers (each replay sets them anew). A key that is not UTF-8 cannot be
/// written back through rdkafka and is left out.
pub fn original_headers(all: &[(&[u8], Option<&[u8]>)]) -> OriginalHeaders {
    let count = all
        .iter()
        .rev()
        .find(|(k, _)| *k == dlq::ORIGINAL_HEADER_COUNT.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8((*v)?).ok()?.trim().parse().ok())
        .unwrap_or(0);
    let ours = [
        headers::REPLAY_COUNT,
        headers::REPLAYED_FROM,
        headers::REPLAYED_REASON,
    ];
    all.get(..count)
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, v)| {
            let key = std::str::from_utf8(k).ok()?;
            (!ours.contains(&key)).then(|| (key.to_string(), v.map(<[u8]>::to_vec)))
        })
        .collect()
}

/// Reads the headers the replay needs. When a header repeats, the last one
/// wins (as Kafka's `lastHeader`); empty values count as absent.
pub fn parse_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> DeadLetterHeaders {
    let mut h = DeadLetterHeaders {
        reason: None,
        detail: None,
        source_topic: None,
        replay_count: Ok(0),
    };
    for (key, value) in headers {
        let text = value
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
            .filter(|v| !v.is_empty());
        match key {
            dlq::REASON => h.reason = text,
            dlq::DETAIL => h.detail = text,
            dlq::SOURCE_TOPIC => h.source_topic = text,
            headers::REPLAY_COUNT => {
                h.replay_count = match text {
                    None => Ok(0),
                    Some(t) => t.parse().map_err(|_| t),
                }
            }
            _ => {}
        }
    }
    h
}

/// What the replay does with every record, from the command's options.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Empty: every reason.
    pub reasons: BTreeSet<String>,
    pub max_replays: u32,
    pub to: Option<String>,
    pub dlq_topic: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Its reason is not among the `--reason` filters.
    Skip,
    Refuse(Refusal),
    /// Produce it to `topic` with `replay_count` (already incremented).
    Replay {
        topic: String,
        replay_count: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `replay_count` reached `--max-replays`: its cause is likely not fixed.
    TooManyReplays {
        replay_count: u32,
    },
    NoSourceTopic,
    /// An unreadable `replay_count`, or a `source_topic` naming the
    /// dead-letter topic itself (it would loop).
    Invalid(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyReplays { replay_count } => {
                write!(f, "replayed {replay_count} times already")
            }
            Refusal::NoSourceTopic => f.write_str("no source_topic header"),
            Refusal::Invalid(why) => f.write_str(why),
        }
    }
}

pub fn decide(h: &DeadLetterHeaders, policy: &Policy) -> Decision {
    if !policy.reasons.is_empty()
        && !h
            .reason
            .as_ref()
            .is_some_and(|r| policy.reasons.contains(r))
    {
        return Decision::Skip;
    }
    let count = match &h.replay_count {
        Ok(count) => *count,
        Err(raw) => {
            return Decision::Refuse(Refusal::Invalid(format!(
                "replay_count header {raw:?} is not a number"
            )))
        }
    };
    if count >= policy.max_replays {
        return Decision::Refuse(Refusal::TooManyReplays {
            replay_count: count,
        });
    }
    let Some(topic) = policy.to.as_deref().or(h.source_topic.as_deref()) else {
        return Decision::Refuse(Refusal::NoSourceTopic);
    };
    if topic == policy.dlq_topic {
        return Decision::Refuse(Refusal::Invalid(
            "its source_topic is the dead-letter topic".into(),
        ));
    }
    Decision::Replay {
        topic: topic.to_string(),
        // count < max_replays <= u32::MAX, so this cannot overflow.
        replay_count: count + 1,
    }
}

/// Checks the `--reason` values against the reasons the daemon writes, so a
/// typo fails instead of silently matching nothing.
pub fn validate_reasons(reasons: &[String]) -> Result<BTreeSet<String>, String> {
    let known: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    reasons
        .iter()
        .map(|r| {
            if known.contains(&r.as_str()) {
                Ok(r.clone())
            } else {
                Err(format!(
                    "--reason `{r}` is not a dead-letter reason (one of: {})",
                    known.join(", ")
                ))
            }
        })
        .collect()
}

/// `{group_id}-replay`, plus `-{reasons sorted, joined by '+'}` when filtered,
/// so each filter keeps its own position on the dead-letter topic.
pub fn default_group(group_id: &str, reasons: &BTreeSet<String>) -> String {
    let mut group = format!("{group_id}-replay");
    if !reasons.is_empty() {
        group.push('-');
        group.push_str(&reasons.iter().cloned().collect::<Vec<_>>().join("+"));
    }
    group
}

/// Records per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub replayed: u64,
    pub skipped: u64,
    pub refused_too_many_replays: u64,
    pub refused_no_source_topic: u64,
    pub refused_invalid: u64,
}

impl Counts {
    pub(super) fn record(&mut self, decision: &Decision) {
        match decision {
            Decision::Skip => self.skipped += 1,
            Decision::Replay { .. } => self.replayed += 1,
            Decision::Refuse(Refusal::TooManyReplays { .. }) => self.refused_too_many_replays += 1,
            Decision::Refuse(Refusal::NoSourceTopic) => self.refused_no_source_topic += 1,
            Decision::Refuse(Refusal::Invalid(_)) => self.refused_invalid += 1,
        }
    }

    pub(super) fn add(&mut self, other: &Counts) {
        self.replayed += other.replayed;
        self.skipped += other.skipped;
        self.refused_too_many_replays += other.refused_too_many_replays;
        self.refused_no_source_topic += other.refused_no_source_topic;
        self.refused_invalid += other.refused_invalid;
    }

    pub fn refused(&self) -> u64 {
        self.refused_too_many_replays + self.refused_no_source_topic + self.refused_invalid
    }

    pub fn handled(&self) -> u64 {
        self.replayed + self.skipped + self.refused()
    }
}

/// Counts in total and per `reason` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: Counts,
    pub per_reason: BTreeMap<String, Counts>,
}

impl Tally {
    pub(super) fn record(&mut self, reason: &str, decision: &Decision) {
        self.total.record(decision);
        self.per_reason
            .entry(reason.to_string())
            .or_default()
            .record(decision);
    }

    pub(super) fn add(&mut self, other: &Tally) {
        self.total.add(&other.total);
        for (reason, counts) in &other.per_reason {
            self.per_reason
                .entry(reason.clone())
                .or_default()
                .add(counts);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    EndOfTopic,
    Limit,
    /// A Kafka error; the counts are what was committed before it.
    Failed,
}

/// What a run did. Only committed work is counted (in a dry run: everything
/// read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub dlq_topic: String,
    pub group: String,
    pub dry_run: bool,
    pub max_replays: u32,
    pub counts: Tally,
    pub stop: StopCause,
}

impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.counts.total;
        writeln!(
            f,
            "replay-dlq summary: dead-letter topic {}, group {}{}",
            self.dlq_topic,
            self.group,
            if self.dry_run {
                " (dry run: nothing produced, nothing committed)"
            } else {
                ""
            }
        )?;
        let stop = match self.stop {
            StopCause::EndOfTopic => "at the end of the dead-letter topic",
            StopCause::Limit => "--limit reached",
            StopCause::Failed => "on a Kafka error (the counts are what was committed before it)",
        };
        writeln!(f, "  stopped:                       {stop}")?;
        let replayed = if self.dry_run {
            "would be replayed:"
        } else {
            "replayed:"
        };
        writeln!(f, "  {replayed:<30} {}", t.replayed)?;
        writeln!(f, "  skipped by --reason filter:    {}", t.skipped)?;
        writeln!(
            f,
            "  refused, too many replays:     {}  (replay_count >= {})",
            t.refused_too_many_replays, self.max_replays
        )?;
        writeln!(
            f,
            "  refused, no source topic:      {}",
            t.refused_no_source_topic
        )?;
        writeln!(f, "  refused, invalid headers:      {}", t.refused_invalid)?;
        if !self.counts.per_reason.is_empty() {
            writeln!(
                f,
                "  {:<16} {:>9} {:>8} {:>17} {:>16} {:>8}",
                "reason", "replayed", "skipped", "too many replays", "no source topic", "invalid"
            )?;
            for (reason, c) in &self.counts.per_reason {
                writeln!(
                    f,
                    "  {:<16} {:>9} {:>8} {:>17} {:>16} {:>8}",
                    reason,
                    c.replayed,
                    c.skipped,
                    c.refused_too_many_replays,
                    c.refused_no_source_topic,
                    c.refused_invalid
                )?;
            }
        }
        Ok(())
    }
}
