//! What a replica's own librdkafka says about its group membership, read from
//! its JSON logs when it runs with `debug = "cgrp"` and
//! `RUST_LOG=info,librdkafka=debug`: its generation (classic protocol: the
//! JoinGroup response's GenerationId; KIP-848: the member epoch of each
//! heartbeat response), when each partition was started and removed, when
//! offset commits were sent and when it learnt its assignment was lost. The
//! broker does not tell which member committed what, so this is the only
//! view of "who owned what when".
// Shared by several test binaries; each uses a part.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

pub use crate::common::epoch_secs;

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
    /// An OffsetCommit request for this many partitions was sent, with
    /// this generation (member epoch under KIP-848).
    Commit(usize, i32),
    /// The member's generation (classic) or member epoch (KIP-848) is now this.
    Generation(i32),
    /// librdkafka found the assignment lost (e.g. the session expired):
    /// the member was fenced.
    Lost,
    /// The broker's (or librdkafka's) answer to an OffsetCommit for this many
    /// partitions: "Success" or the error.
    CommitResult(usize, String),
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
                let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                let generation = rest
                    .split("generation-id ")
                    .nth(1)
                    .and_then(|g| g.split_whitespace().next())
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(-1);
                if let Some(n) = n {
                    events.push((t, Event::Commit(n, generation)));
                }
            } else if let Some(rest) = m.split("JoinGroup response: GenerationId ").nth(1) {
                if m.ends_with("(no error)") {
                    if let Some(g) = rest.split(',').next().and_then(|g| g.trim().parse().ok()) {
                        events.push((t, Event::Generation(g)));
                    }
                }
            } else if m.contains("ConsumerGroupHeartbeat response received for member id") {
                if let Some(e) = m
                    .rsplit("with epoch ")
                    .next()
                    .and_then(|e| e.trim().parse::<i32>().ok())
                {
                    // -1 and 0: leaving or not joined yet, owning nothing.
                    if e > 0 {
                        events.push((t, Event::Generation(e)));
                    }
                }
            } else if let Some(rest) = m.split("OffsetCommit for ").nth(1) {
                let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
                if let (Some(n), Some(result)) = (n, rest.rsplit("returned: ").next()) {
                    if rest.contains("returned: ") {
                        events.push((t, Event::CommitResult(n, result.trim().to_string())));
                    }
                }
            } else if (m.contains("current assignment of") && m.contains("lost"))
                || m.contains("Revoking assignment as lost")
                || (m.contains(" REBALANCE ") && m.contains(" (lost): "))
            {
                events.push((t, Event::Lost));
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
                Event::Generation(_) | Event::Lost | Event::CommitResult(..) => {}
                Event::Commit(n, _) => {
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
            .filter(|(_, e)| matches!(e, Event::Commit(..)))
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
                Event::Commit(..)
                | Event::Generation(_)
                | Event::Lost
                | Event::CommitResult(..) => {}
            }
        }
        for (p, from) in open {
            out.entry(p).or_default().push((from, self.end));
        }
        out
    }
}

impl Member {
    /// (generation, partition) pairs: the partitions this member owned at
    /// any moment while it was in that generation (member epoch).
    ///
    /// A partition carried into a new generation and removed within
    /// [`LOG_TIME_PRECISION`] of the bump was being given up as part of it:
    /// under KIP-848 librdkafka logs the new member epoch before it revokes
    /// what the new target assignment no longer holds, and the next owner
    /// gets it only after that revocation (the time-overlap check still
    /// covers it).
    pub fn owned_by_generation(&self) -> BTreeSet<(i32, i32)> {
        let mut out = BTreeSet::new();
        let mut owned: BTreeSet<i32> = BTreeSet::new();
        let mut generation = -1;
        // (generation, partition) carried over at a bump, and when.
        let mut carried: BTreeMap<(i32, i32), f64> = BTreeMap::new();
        for (t, e) in &self.events {
            match e {
                Event::Generation(g) => {
                    generation = *g;
                    for p in &owned {
                        out.insert((generation, *p));
                        carried.insert((generation, *p), *t);
                    }
                }
                Event::Start(p) => {
                    owned.insert(*p);
                    out.insert((generation, *p));
                    carried.remove(&(generation, *p));
                }
                Event::Remove(p) => {
                    owned.remove(p);
                    if let Some(bumped) = carried.remove(&(generation, *p)) {
                        if t - bumped <= LOG_TIME_PRECISION {
                            out.remove(&(generation, *p));
                        }
                    }
                }
                Event::Commit(..) | Event::Lost | Event::CommitResult(..) => {}
            }
        }
        out
    }

    /// The partitions it owned at the end of its log.
    pub fn owned_now(&self) -> BTreeSet<i32> {
        let mut owned = BTreeSet::new();
        for (_, e) in &self.events {
            match e {
                Event::Start(p) => {
                    owned.insert(*p);
                }
                Event::Remove(p) => {
                    owned.remove(p);
                }
                _ => {}
            }
        }
        owned
    }

    /// When librdkafka found this member's assignment lost (fenced).
    pub fn lost_at(&self) -> Vec<f64> {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Lost))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Generations seen, in order.
    pub fn generations(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for (_, e) in &self.events {
            if let Event::Generation(g) = e {
                if out.last() != Some(g) {
                    out.push(*g);
                }
            }
        }
        out
    }
}

/// Partitions owned by two members in the same generation (classic
/// protocol) or at the same member epoch (KIP-848): (generation, partition,
/// the members).
pub fn two_owners_in_one_generation(members: &[Member]) -> Vec<(i32, i32, Vec<String>)> {
    let mut owners: BTreeMap<(i32, i32), Vec<String>> = BTreeMap::new();
    for m in members {
        for key in m.owned_by_generation() {
            owners.entry(key).or_default().push(m.name.clone());
        }
    }
    owners
        .into_iter()
        .filter(|((g, _), names)| *g >= 0 && names.len() > 1)
        .map(|((g, p), names)| (g, p, names))
        .collect()
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

/// How far apart in time two replicas' log lines can be from the events they
/// report. rust-rdkafka routes librdkafka's log lines through the client's
/// main queue (`log.queue`), so a line is written (and timestamped) when the
/// daemon's consumer thread next polls, not when librdkafka acted. Seen: a
/// revoking replica's "Removing ... from assignment" written 3 ms after the
/// next owner's "Starting pending assigned partition", although the next
/// owner could only get the partition after the remover had rejoined. The
/// generation check does not depend on times; only the time-overlap check
/// allows this much.
pub const LOG_TIME_PRECISION: f64 = 0.5;

/// The strict group checks every multi-replica scenario ends with, on the
/// members' librdkafka logs and the committed offsets sampled during the
/// run (`backwards`: moves back between two samples):
/// - no partition owned by two members in one generation (member epoch);
/// - no two members owning a partition at the same time (beyond the log
///   times' precision), unless one of them was fenced (librdkafka later
///   found its assignment lost: a zombie that did not know yet);
/// - no commit naming more partitions than the member owned;
/// - no committed offset ever moved back (a fenced member's commits were
///   refused).
///
/// Prints each member's ownership (seconds since `started_at`) and returns
/// the overlaps with a fenced member, for the report.
pub fn assert_strict(
    label: &str,
    members: &[Member],
    backwards: &[super::check::Backward],
    started_at: f64,
) -> Vec<Overlap> {
    for m in members {
        let owned: Vec<String> = m
            .intervals()
            .iter()
            .map(|(p, iv)| {
                let iv: Vec<String> = iv
                    .iter()
                    .map(|(f, t)| format!("{:.1}-{:.1}", f - started_at, t - started_at))
                    .collect();
                format!("p{p} {}", iv.join(","))
            })
            .collect();
        println!(
            "[{label}] {} owned (s since start) {}; generations {:?}; {} commits sent; \
         assignment lost at {:?}",
            m.name,
            owned.join("; "),
            m.generations(),
            m.commits(),
            m.lost_at()
                .iter()
                .map(|t| format!("{:.1}", t - started_at))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        members.iter().map(Member::commits).sum::<usize>() > 0
            && members
                .iter()
                .any(|m| m.events.iter().any(|(_, e)| matches!(e, Event::Start(_))))
            && members.iter().any(|m| !m.generations().is_empty()),
        "[{label}] the librdkafka group debug logs were not found or not understood"
    );
    let twice = two_owners_in_one_generation(members);
    assert!(
        twice.is_empty(),
        "[{label}] partitions owned by two members in one generation \
         (generation, partition, members): {twice:?}"
    );
    let beyond: Vec<String> = members
        .iter()
        .flat_map(Member::commits_beyond_ownership)
        .collect();
    assert!(
        beyond.is_empty(),
        "[{label}] commits beyond ownership: {beyond:?}"
    );
    let fenced_after = |name: &str, from: f64| {
        members
            .iter()
            .filter(|m| m.name == name)
            .any(|m| m.lost_at().iter().any(|t| *t >= from))
    };
    let (zombie, rest): (Vec<Overlap>, Vec<Overlap>) = overlaps(members)
        .into_iter()
        .partition(|o| fenced_after(&o.members.0, o.from) || fenced_after(&o.members.1, o.from));
    let (blur, overlaps): (Vec<Overlap>, Vec<Overlap>) = rest
        .into_iter()
        .partition(|o| o.to - o.from <= LOG_TIME_PRECISION);
    assert!(
        overlaps.is_empty(),
        "[{label}] partitions owned by two live members at once for more than \
         {LOG_TIME_PRECISION} s: {overlaps:?}"
    );
    assert!(
        backwards.is_empty(),
        "[{label}] a committed offset moved back (time of the sample before, of the sample, \
         partition, from, to): {backwards:?}"
    );
    println!(
        "[{label}] strict group checks passed: no partition owned twice in one generation, \
         none owned by two live members at once ({} apparent overlaps within the log times' \
         precision, longest {:.3} s; {} overlaps with a member that was fenced: {}), no \
         commit beyond ownership, no offset moved back",
        blur.len(),
        blur.iter().map(|o| o.to - o.from).fold(0.0, f64::max),
        zombie.len(),
        zombie
            .iter()
            .map(|o| format!(
                "p{} {}+{} {:.1}s",
                o.partition,
                o.members.0,
                o.members.1,
                o.to - o.from
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    zombie
}

/// When the partitions `victim` owned at `at` were all started by other
/// members (the first time after the victim's ownership ended, or after
/// `at` if it had not, that each of them was), if they were.
pub fn taken_over(members: &[Member], victim: &str, at: f64) -> Option<f64> {
    // Owned "at `at`" allows 0.5 s for the logs' precision; a partition the
    // victim gave up within it may have been started by its next owner just
    // before `at` (ci14: revoked at 2.3 s, started elsewhere at 2.4 s, kill at
    // 2.8 s), so its start is looked for from the end of the victim's
    // ownership.
    let owned: Vec<(i32, f64)> = members
        .iter()
        .filter(|m| m.name == victim)
        .flat_map(|m| {
            m.intervals().into_iter().filter_map(|(p, iv)| {
                iv.iter()
                    .find(|(f, t)| *f <= at && at <= *t + 0.5)
                    .map(|(_, t)| (p, t.min(at)))
            })
        })
        .collect();
    let mut last = at;
    for (p, ended) in owned {
        let first = members
            .iter()
            .filter(|m| m.name != victim)
            .flat_map(|m| m.events.iter())
            .filter(|(t, e)| *t >= ended && *e == Event::Start(p))
            .map(|(t, _)| *t)
            .fold(f64::INFINITY, f64::min);
        if !first.is_finite() {
            return None;
        }
        last = last.max(first);
    }
    Some(last)
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

    #[test]
    fn reads_generations_commits_and_ownership() {
        let line = |t: &str, m: &str| {
            format!(
                "{{\"timestamp\":\"1970-01-01T00:00:{t}Z\",\"message\":{}}}",
                serde_json::to_string(m).unwrap()
            )
        };
        let logs = [
            line("01", "[thrd:main]: JoinGroup response: GenerationId 4, Protocol range, LeaderId x (me), my MemberId x, member metadata count 1: (no error)"),
            line("02", "librdkafka: SRVPEND [thrd:main]: Starting pending assigned partition t [0] at offset INVALID"),
            line("03", "Committing offsets for 1 partition(s) with generation-id 4 in join-state steady: manual"),
            line("04", "librdkafka: REMOVE [thrd:main]: Removing t [0] from assignment (started=true, pending=false, queried=false, stored offset=INVALID)"),
            line("05", "JoinGroup response: GenerationId 5, Protocol range, LeaderId y, my MemberId x, member metadata count 2: (no error)"),
            line("06", "librdkafka: SRVPEND [thrd:main]: Starting pending assigned partition t [1] at offset INVALID"),
            line("07", "ConsumerGroupHeartbeat response received for member id \"x\" with epoch 7"),
            line("08", "Group \"g\": current assignment of 1 partition(s) lost: heartbeat failed"),
        ]
        .join("\n");
        let m = super::Member::from_logs("a", &logs, "t", None);
        assert_eq!(m.generations(), vec![4, 5, 7]);
        assert_eq!(
            m.owned_by_generation().into_iter().collect::<Vec<_>>(),
            vec![(4, 0), (5, 1), (7, 1)]
        );
        assert_eq!(m.commits(), 1);
        assert!(m.events.contains(&(3.0, super::Event::Commit(1, 4))));
        assert_eq!(m.lost_at(), vec![8.0]);
        let other = super::Member::from_logs("b", &logs, "t", None);
        assert_eq!(super::two_owners_in_one_generation(&[m, other]).len(), 3);
    }

    #[test]
    fn a_partition_handed_over_just_before_the_kill_counts_as_taken_over() {
        let line = |t: &str, m: String| {
            format!(
                "{{\"timestamp\":\"1970-01-01T00:00:{t}Z\",\"message\":{}}}",
                serde_json::to_string(&m).unwrap()
            )
        };
        let start = |p: i32| {
            format!("librdkafka: SRVPEND [thrd:main]: Starting pending assigned partition t [{p}] at offset INVALID")
        };
        let remove = |p: i32| {
            format!(
                "librdkafka: REMOVE [thrd:main]: Removing t [{p}] from assignment (started=true)"
            )
        };
        // The victim gives p2 up at 02.3, its next owner starts it at 02.4,
        // the victim is killed at 02.8 still owning p0; p0 restarts at 12.4.
        let victim = [
            line("01", start(0)),
            line("01", start(2)),
            line("02.3", remove(2)),
        ]
        .join("\n");
        let survivor = [line("02.4", start(2)), line("12.4", start(0))].join("\n");
        let members = [
            super::Member::from_logs("b", &victim, "t", Some(2.8)),
            super::Member::from_logs("d", &survivor, "t", None),
        ];
        let took = super::taken_over(&members, "b", 2.8).expect("taken over");
        assert!((took - 12.4).abs() < 1e-6, "{took}");
        // Not taken over while p0 has not been started elsewhere.
        let survivor = line("02.4", start(2));
        let members = [
            super::Member::from_logs("b", &victim, "t", Some(2.8)),
            super::Member::from_logs("d", &survivor, "t", None),
        ];
        assert_eq!(super::taken_over(&members, "b", 2.8), None);
    }
}
