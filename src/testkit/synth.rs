//! Synthetic "user-deleted" events for the demo, the tests and the benchmark:
//! several regions, both id kinds, arrays, repeats, and a share of poison.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::domain::ids::IdKind;
use crate::domain::outcome::DeadLetterReason;

#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub count: usize,
    pub regions: Vec<String>,
    /// Share of events that repeat an earlier event (a producer retrying).
    pub duplicate_ratio: f64,
    /// Share of events that must be dead-lettered.
    pub poison_ratio: f64,
    pub seed: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            count: 1_000,
            regions: vec!["eu1".into(), "in1".into(), "us1".into()],
            duplicate_ratio: 0.2,
            poison_ratio: 0.02,
            seed: 42,
        }
    }
}

/// One deletion the event asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectedDeletion {
    pub region: String,
    pub kind: IdKind,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct SynthEvent {
    pub key: String,
    pub payload: Vec<u8>,
    pub deletions: Vec<ExpectedDeletion>,
    /// Set for poison: the reason the daemon must give.
    pub poison: Option<DeadLetterReason>,
}

const POISON: [DeadLetterReason; 5] = [
    DeadLetterReason::NotJson,
    DeadLetterReason::NoId,
    DeadLetterReason::InvalidId,
    DeadLetterReason::UnknownRegion,
    DeadLetterReason::NotUtf8,
];

pub fn generate(spec: &SynthSpec) -> Vec<SynthEvent> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut out: Vec<SynthEvent> = Vec::with_capacity(spec.count);
    let mut next_user = 0u64;
    for n in 0..spec.count {
        let roll: f64 = rng.random();
        if roll < spec.poison_ratio {
            out.push(poison(n, POISON[n % POISON.len()]));
            continue;
        }
        if roll < spec.poison_ratio + spec.duplicate_ratio && !out.is_empty() {
            let earlier = rng.random_range(0..out.len());
            if out[earlier].poison.is_none() {
                let repeat = out[earlier].clone();
                out.push(repeat);
                continue;
            }
        }
        let region = spec.regions[rng.random_range(0..spec.regions.len())].clone();
        let user = next_user;
        next_user += 1;
        let identity = format!("user-{:08}-{}", user, spec.seed);
        let guid = format!("{:032x}", (user as u128) << 64 | spec.seed as u128 ^ 0x5eed);
        let shape = rng.random_range(0..100);
        let (body, deletions) = match shape {
            0..40 => (
                format!("\"identity\":\"{identity}\""),
                vec![(IdKind::Identity, identity.clone())],
            ),
            40..70 => (
                format!("\"guid\":\"{guid}\""),
                vec![(IdKind::Guid, guid.clone())],
            ),
            70..85 => (
                format!("\"identity\":\"{identity}\",\"guid\":[\"{guid}\"]"),
                vec![
                    (IdKind::Identity, identity.clone()),
                    (IdKind::Guid, guid.clone()),
                ],
            ),
            _ => {
                let second = format!("{identity}-alt");
                (
                    format!("\"identity\":[\"{identity}\",\"{second}\"]"),
                    vec![
                        (IdKind::Identity, identity.clone()),
                        (IdKind::Identity, second),
                    ],
                )
            }
        };
        let payload = format!(
            "{{\"type\":\"user-deleted\",\"region\":\"{region}\",{body},\"requested_at\":\"2026-11-28T12:00:00Z\",\"source\":\"accounts-service\"}}"
        );
        out.push(SynthEvent {
            key: identity,
            payload: payload.into_bytes(),
            deletions: deletions
                .into_iter()
                .map(|(kind, id)| ExpectedDeletion {
                    region: region.clone(),
                    kind,
                    id,
                })
                .collect(),
            poison: None,
        });
    }
    out
}

fn poison(n: usize, reason: DeadLetterReason) -> SynthEvent {
    let payload: Vec<u8> = match reason {
        DeadLetterReason::NotJson => format!("user {n} deleted").into_bytes(),
        DeadLetterReason::NoId => br#"{"type":"user-deleted","region":"eu1"}"#.to_vec(),
        DeadLetterReason::InvalidId => {
            br#"{"type":"user-deleted","region":"eu1","identity":""}"#.to_vec()
        }
        DeadLetterReason::UnknownRegion => {
            format!("{{\"type\":\"user-deleted\",\"region\":\"mars1\",\"identity\":\"p{n}\"}}")
                .into_bytes()
        }
        _ => b"{\"type\":\"user-deleted\",\"identity\":\"\xff\xfe\"}".to_vec(),
    };
    SynthEvent {
        key: format!("poison-{n}"),
        payload,
        deletions: Vec::new(),
        poison: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_roughly_as_asked() {
        let events = generate(&SynthSpec {
            count: 10_000,
            ..SynthSpec::default()
        });
        let poison = events.iter().filter(|e| e.poison.is_some()).count();
        assert!((100..=300).contains(&poison), "{poison}");
        let mut seen = std::collections::HashSet::new();
        let repeats = events
            .iter()
            .filter(|e| e.poison.is_none() && !seen.insert(e.payload.clone()))
            .count();
        assert!((1_500..=2_500).contains(&repeats), "{repeats}");
        let avg = events.iter().map(|e| e.payload.len()).sum::<usize>() / events.len();
        assert!((100..=220).contains(&avg), "{avg}");
    }
}
