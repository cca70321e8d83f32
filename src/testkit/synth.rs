//! Synthetic "user-deleted" events for the demo, the tests and the benchmark:
//! several regions, both id kinds, arrays, repeats, and a share of poison;
//! as plain JSON or as CloudEvents (structured and binary mode).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::message::{Header, OwnedHeaders};

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
    pub format: SynthFormat,
}

/// How the events are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynthFormat {
    /// The payload is the event (`event.format = "json"`).
    #[default]
    Json,
    /// CloudEvents (`event.format = "cloudevents"`), structured and binary
    /// mode mixed at random.
    CloudEvents,
    /// CloudEvents, all in structured mode: the payload is the envelope,
    /// `content-type: application/cloudevents+json`.
    CloudEventsStructured,
    /// CloudEvents, all in binary mode: `ce_*` headers, the payload is the data.
    CloudEventsBinary,
}

impl Default for SynthSpec {
    fn default() -> Self {
        SynthSpec {
            count: 1_000,
            regions: vec!["eu1".into(), "in1".into(), "us1".into()],
            duplicate_ratio: 0.2,
            poison_ratio: 0.02,
            seed: 42,
            format: SynthFormat::Json,
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
    /// Kafka headers (CloudEvents); empty for plain JSON.
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub deletions: Vec<ExpectedDeletion>,
    /// Set for poison: the reason the daemon must give.
    pub poison: Option<DeadLetterReason>,
}

impl SynthEvent {
    /// Its headers as a producer sends them (`None`: it has none).
    pub fn kafka_headers(&self) -> Option<OwnedHeaders> {
        (!self.headers.is_empty()).then(|| {
            self.headers.iter().fold(
                OwnedHeaders::new_with_capacity(self.headers.len()),
                |h, (k, v)| {
                    h.insert(Header {
                        key: k.as_str(),
                        value: Some(v.as_str()),
                    })
                },
            )
        })
    }
}

const POISON: [DeadLetterReason; 5] = [
    DeadLetterReason::NotJson,
    DeadLetterReason::NoId,
    DeadLetterReason::InvalidId,
    DeadLetterReason::UnknownRegion,
    DeadLetterReason::NotUtf8,
];

/// With CloudEvents, envelope errors too.
const CLOUDEVENT_POISON: [DeadLetterReason; 7] = [
    DeadLetterReason::NotJson,
    DeadLetterReason::NoId,
    DeadLetterReason::InvalidId,
    DeadLetterReason::UnknownRegion,
    DeadLetterReason::NotUtf8,
    DeadLetterReason::InvalidCloudevent,
    DeadLetterReason::NotCloudevent,
];

/// The `source` attribute of synthetic CloudEvents.
pub const CLOUDEVENT_SOURCE: &str = "/accounts-service";

/// Whether the `n`th CloudEvent is in binary mode.
fn binary(format: SynthFormat, rng: &mut StdRng) -> bool {
    match format {
        SynthFormat::CloudEventsBinary => true,
        SynthFormat::CloudEvents => rng.random_bool(0.5),
        SynthFormat::Json | SynthFormat::CloudEventsStructured => false,
    }
}

/// A CloudEvent of `ty` around `data` (JSON text or other bytes): binary
/// mode (`ce_*` headers, the payload is the data) or structured mode.
/// `id: None` leaves the required `id` out.
pub fn cloudevent(
    binary: bool,
    ty: &str,
    id: Option<&str>,
    data: &[u8],
) -> (Vec<(String, String)>, Vec<u8>) {
    if binary {
        let mut headers = vec![
            ("ce_specversion".to_string(), "1.0".to_string()),
            ("ce_type".to_string(), ty.to_string()),
            ("ce_source".to_string(), CLOUDEVENT_SOURCE.to_string()),
        ];
        if let Some(id) = id {
            headers.push(("ce_id".to_string(), id.to_string()));
        }
        headers.push(("ce_time".to_string(), "2026-11-28T12:00:00Z".to_string()));
        headers.push(("content-type".to_string(), "application/json".to_string()));
        return (headers, data.to_vec());
    }
    let id = id.map(|id| format!("\"id\":\"{id}\",")).unwrap_or_default();
    let mut payload = format!(
        "{{\"specversion\":\"1.0\",\"type\":\"{ty}\",\"source\":\"{CLOUDEVENT_SOURCE}\",{id}\"time\":\"2026-11-28T12:00:00Z\",\"datacontenttype\":\"application/json\",\"data\":"
    )
    .into_bytes();
    payload.extend_from_slice(data);
    payload.push(b'}');
    (
        vec![(
            "content-type".to_string(),
            "application/cloudevents+json; charset=utf-8".to_string(),
        )],
        payload,
    )
}

pub fn generate(spec: &SynthSpec) -> Vec<SynthEvent> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut out: Vec<SynthEvent> = Vec::with_capacity(spec.count);
    let mut next_user = 0u64;
    for n in 0..spec.count {
        let roll: f64 = rng.random();
        if roll < spec.poison_ratio {
            out.push(match spec.format {
                SynthFormat::Json => poison(n, POISON[n % POISON.len()]),
                format => {
                    let binary = binary(format, &mut rng);
                    cloudevent_poison(n, CLOUDEVENT_POISON[n % CLOUDEVENT_POISON.len()], binary)
                }
            });
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
        let (headers, payload) = match spec.format {
            SynthFormat::Json => (
                Vec::new(),
                format!(
                    "{{\"type\":\"user-deleted\",\"region\":\"{region}\",{body},\"requested_at\":\"2026-11-28T12:00:00Z\",\"source\":\"accounts-service\"}}"
                )
                .into_bytes(),
            ),
            format => {
                let data = format!(
                    "{{\"region\":\"{region}\",{body},\"requested_at\":\"2026-11-28T12:00:00Z\"}}"
                );
                let id = format!("evt-{user:08}-{}", spec.seed);
                cloudevent(binary(format, &mut rng), "user-deleted", Some(&id), data.as_bytes())
            }
        };
        out.push(SynthEvent {
            key: identity,
            headers,
            payload,
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
        headers: Vec::new(),
        payload,
        deletions: Vec::new(),
        poison: Some(reason),
    }
}

fn cloudevent_poison(n: usize, reason: DeadLetterReason, binary: bool) -> SynthEvent {
    let id = format!("poison-{n}");
    let (headers, payload) = match reason {
        DeadLetterReason::NotJson if binary => cloudevent(
            true,
            "user-deleted",
            Some(&id),
            format!("user {n} deleted").as_bytes(),
        ),
        DeadLetterReason::NotJson => cloudevent(false, "user-deleted", Some(&id), b"{\"region\":"),
        DeadLetterReason::NoId => {
            cloudevent(binary, "user-deleted", Some(&id), br#"{"region":"eu1"}"#)
        }
        DeadLetterReason::InvalidId => cloudevent(
            binary,
            "user-deleted",
            Some(&id),
            br#"{"region":"eu1","identity":""}"#,
        ),
        DeadLetterReason::UnknownRegion => cloudevent(
            binary,
            "user-deleted",
            Some(&id),
            format!("{{\"region\":\"mars1\",\"identity\":\"p{n}\"}}").as_bytes(),
        ),
        DeadLetterReason::InvalidCloudevent => cloudevent(
            binary,
            "user-deleted",
            None,
            format!("{{\"identity\":\"p{n}\"}}").as_bytes(),
        ),
        DeadLetterReason::NotCloudevent => (
            Vec::new(),
            format!("{{\"type\":\"user-deleted\",\"region\":\"eu1\",\"identity\":\"p{n}\"}}")
                .into_bytes(),
        ),
        _ => cloudevent(
            binary,
            "user-deleted",
            Some(&id),
            b"{\"identity\":\"\xff\xfe\"}",
        ),
    };
    SynthEvent {
        key: id,
        headers,
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

    #[test]
    fn cloudevents_come_in_both_modes_with_envelope_poison() {
        let events = generate(&SynthSpec {
            count: 4_000,
            poison_ratio: 0.05,
            format: SynthFormat::CloudEvents,
            ..SynthSpec::default()
        });
        let has = |e: &SynthEvent, key: &str, value: &str| {
            e.headers
                .iter()
                .any(|(k, v)| k == key && v.starts_with(value))
        };
        let binary = events
            .iter()
            .filter(|e| has(e, "ce_specversion", "1.0"))
            .count();
        let structured = events
            .iter()
            .filter(|e| has(e, "content-type", "application/cloudevents+json"))
            .count();
        assert!(
            binary > 1_000 && structured > 1_000,
            "{binary} {structured}"
        );
        for reason in [
            DeadLetterReason::InvalidCloudevent,
            DeadLetterReason::NotCloudevent,
        ] {
            assert!(events.iter().any(|e| e.poison == Some(reason)), "{reason}");
        }
        let only = |format| {
            generate(&SynthSpec {
                count: 200,
                poison_ratio: 0.0,
                format,
                ..SynthSpec::default()
            })
        };
        assert!(only(SynthFormat::CloudEventsBinary).iter().all(|e| has(
            e,
            "ce_specversion",
            "1.0"
        )));
        assert!(only(SynthFormat::CloudEventsStructured).iter().all(|e| has(
            e,
            "content-type",
            "application/cloudevents+json"
        )));
    }
}
