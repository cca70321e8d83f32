//! What a replica's own librdkafka says about its group membership, read from
//! its JSON logs when it runs with `debug = "cgrp"` and
//! `RUST_LOG=info,librdkafka=debug`: when each partition was started and
//! removed, and when offset commits were sent. The broker does not tell which
//! member committed what, so this is the only view of "who owned what when".

use std::collections::{BTreeMap, BTreeSet};

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as the daemon
/// logs it (`2026-11-28T20:30:34.939721Z`).
pub fn epoch_secs(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3_600.0 + mm * 60.0 + ss)
}

pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// librdkafka started fetching the partition for this member.
    Start(i32),
    /// The partition left the member's assignment.
    Remove(i32),
    /// An OffsetCommit request for this many partitions was sent.
    Commit(usize),
}

/// One replica's membership history.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub events: Vec<(f64, Event)>,
    /// When the process ended (its last log line, or the kill time).
    pub end: f64,
}

/// `T [p]` inside a librdkafka message, for our topic.
fn partition_in(message: &str, topic: &str) -> Option<i32> {
    let rest = &message[message.find(&format!("{topic} ["))? + topic.len() + 2..];
    rest[..rest.find(']')?].parse().ok()
}

impl Member {
    /// Reads the history from a replica's JSON log lines.
    pub fn from_logs(name: &str, logs: &str, topic: &str, killed_at: Option<f64>) -> Member {
        let mut events = Vec::new();
        let mut last = 0.0f64;
        for line in logs.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(t) = v["timestamp"].as_str().and_then(epoch_secs) else {
                continue;
            };
            last = last.max(t);
            let Some(m) = v["message"].as_str() else {
                continue;
            };
            if m.contains("SRVPEND") && m.contains("Starting pending assigned partition") {
                if let Some(p) = partition_in(m, topic) {
                    events.push((t, Event::Start(p)));
                }
            } else if m.contains("REMOVE") && m.contains("from assignment") {
                if let Some(p) = partition_in(m, topic) {
                    events.push((t, Event::Remove(p)));
                }
            } else if let Some(rest) = m.split("Committing offsets for ").nth(1) {
                if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    events.push((t, Event::Commit(n)));
                }
            }
        }
        Member {
            name: name.to_string(),
            events,
            end: killed_at.unwrap_or(last),
        }
    }

    /// Commits sent while the member owned fewer partitions than the commit
    /// named (in particular: any commit while it owned none). The partitions
    /// of a commit are not logged, only their number.
    pub fn commits_beyond_ownership(&self) -> Vec<String> {
        let mut owned: BTreeSet<i32> = BTreeSet::new();
        let mut bad = Vec::new();
        for (t, e) in &self.events {
            match e {
                Event::Start(p) => {
                    owned.insert(*p);
                }
                Event::Remove(p) => {
                    owned.remove(p);
                }
                Event::Commit(n) => {
                    if *n > owned.len() {
                        bad.push(format!(
                            "{} at {t:.3}: commit for {n} partition(s) while owning {owned:?}",
                            self.name
                        ));
                    }
                }
            }
        }
        bad
    }

    pub fn commits(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Commit(_)))
            .count()
    }

    /// Ownership intervals per partition: (from, to).
    pub fn intervals(&self) -> BTreeMap<i32, Vec<(f64, f64)>> {
        let mut open: BTreeMap<i32, f64> = BTreeMap::new();
        let mut out: BTreeMap<i32, Vec<(f64, f64)>> = BTreeMap::new();
        for (t, e) in &self.events {
            match e {
                Event::Start(p) => {
                    open.entry(*p).or_insert(*t);
                }
                Event::Remove(p) => {
                    if let Some(from) = open.remove(p) {
                        out.entry(*p).or_default().push((from, *t));
                    }
                }
                Event::Commit(_) => {}
            }
        }
        for (p, from) in open {
            out.entry(p).or_default().push((from, self.end));
        }
        out
    }
}

/// When two members owned the same partition at once.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub partition: i32,
    pub members: (String, String),
    pub from: f64,
    pub to: f64,
}

/// Every time two members owned the same partition at once.
pub fn overlaps(members: &[Member]) -> Vec<Overlap> {
    let mut out = Vec::new();
    let intervals: Vec<_> = members.iter().map(Member::intervals).collect();
    for i in 0..members.len() {
        for j in i + 1..members.len() {
            for (p, a) in &intervals[i] {
                let Some(b) = intervals[j].get(p) else {
                    continue;
                };
                for (a0, a1) in a {
                    for (b0, b1) in b {
                        let (from, to) = (a0.max(*b0), a1.min(*b1));
                        if to > from {
                            out.push(Overlap {
                                partition: *p,
                                members: (members[i].name.clone(), members[j].name.clone()),
                                from,
                                to,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_timestamps_and_partitions() {
        let t = super::epoch_secs("1970-01-02T00:00:01.5Z").unwrap();
        assert!((t - 86_401.5).abs() < 1e-6);
        let t = super::epoch_secs("2026-11-28T20:30:34.939721Z").unwrap();
        assert!((t - 1_795_897_834.939_721).abs() < 1e-3, "{t}");
        assert_eq!(
            super::partition_in("Removing e2e-x-1 [3] from assignment", "e2e-x-1"),
            Some(3)
        );
    }
}
