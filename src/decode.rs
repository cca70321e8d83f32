//! Turns a Kafka message payload into a deletion request, a skip, or a
//! dead-letter verdict with a reason. Never panics on input.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::config::{EventSettings, RegionAccount};
use crate::ids::{IdKind, RegionName};

/// Why a message went to the dead-letter topic. The `reason` header and the
/// `reason` metric label use [`DeadLetterReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// No payload (a tombstone) or an empty one.
    Empty,
    TooLarge,
    NotUtf8,
    NotJson,
    /// Neither an identity nor a guid is present.
    NoId,
    /// An id is empty, not a string, or the id field has the wrong type.
    InvalidId,
    IdTooLong,
    TooManyIds,
    /// No region in the event and no `default_region`.
    NoRegion,
    /// A region with no configured account.
    UnknownRegion,
    /// CleverTap answered 400 for this id alone.
    ApiRejected,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 11] = [
        DeadLetterReason::Empty,
        DeadLetterReason::TooLarge,
        DeadLetterReason::NotUtf8,
        DeadLetterReason::NotJson,
        DeadLetterReason::NoId,
        DeadLetterReason::InvalidId,
        DeadLetterReason::IdTooLong,
        DeadLetterReason::TooManyIds,
        DeadLetterReason::NoRegion,
        DeadLetterReason::UnknownRegion,
        DeadLetterReason::ApiRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Empty => "empty",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::NotUtf8 => "not_utf8",
            DeadLetterReason::NotJson => "not_json",
            DeadLetterReason::NoId => "no_id",
            DeadLetterReason::InvalidId => "invalid_id",
            DeadLetterReason::IdTooLong => "id_too_long",
            DeadLetterReason::TooManyIds => "too_many_ids",
            DeadLetterReason::NoRegion => "no_region",
            DeadLetterReason::UnknownRegion => "unknown_region",
            DeadLetterReason::ApiRejected => "api_rejected",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dead-letter verdict. Details made by the decoder never hold an id (ids
/// are personal data); they name the field and the problem. For `ApiRejected`
/// the detail is CleverTap's message, which may repeat the id, like the
/// payload beside it in the dead-letter record; it is never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

/// What one event asks for: ids of one region, each (kind, id) at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRequest {
    pub region: RegionName,
    pub ids: Vec<(IdKind, Arc<str>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Delete(DeletionRequest),
    /// Not an event this daemon handles (its type is not accepted).
    Skip,
    DeadLetter(Rejection),
}

fn reject(reason: DeadLetterReason, detail: impl Into<String>) -> Decoded {
    Decoded::DeadLetter(Rejection {
        reason,
        detail: detail.into(),
    })
}

/// Decodes payloads according to `[event]` settings.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    settings: EventSettings,
    accept_types: HashSet<String>,
    regions: HashMap<String, RegionName>,
    default_region: Option<RegionName>,
}

impl EventDecoder {
    pub fn new(settings: &EventSettings, regions: &[RegionAccount]) -> Self {
        EventDecoder {
            accept_types: settings.accept_types.iter().cloned().collect(),
            regions: regions
                .iter()
                .map(|r| (r.name.as_str().to_string(), r.name.clone()))
                .collect(),
            default_region: settings.default_region.as_deref().map(RegionName::new),
            settings: settings.clone(),
        }
    }

    pub fn decode(&self, payload: Option<&[u8]>) -> Decoded {
        let payload = match payload {
            Some(p) if !p.is_empty() => p,
            _ => return reject(DeadLetterReason::Empty, "the message has no payload"),
        };
        if payload.len() > self.settings.max_message_bytes {
            return reject(
                DeadLetterReason::TooLarge,
                format!(
                    "payload is {} bytes, above event.max_message_bytes = {}",
                    payload.len(),
                    self.settings.max_message_bytes
                ),
            );
        }
        if let Err(e) = std::str::from_utf8(payload) {
            return reject(
                DeadLetterReason::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            );
        }
        // serde_json's recursion limit (128) bounds nesting; deeper input is an error here.
        let event: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                return reject(
                    DeadLetterReason::NotJson,
                    format!(
                        "line {} column {}: {:?}",
                        e.line(),
                        e.column(),
                        e.classify()
                    ),
                )
            }
        };

        if !self.settings.type_pointer.is_empty() {
            let accepted = event
                .pointer(&self.settings.type_pointer)
                .and_then(Value::as_str)
                .is_some_and(|t| self.accept_types.contains(t));
            if !accepted {
                return Decoded::Skip;
            }
        }

        let mut ids: Vec<(IdKind, Arc<str>)> = Vec::new();
        for (kind, pointer) in [
            (IdKind::Identity, &self.settings.identity_pointer),
            (IdKind::Guid, &self.settings.guid_pointer),
        ] {
            if pointer.is_empty() {
                continue;
            }
            if let Err(rejection) = self.collect_ids(&event, kind, pointer, &mut ids) {
                return Decoded::DeadLetter(rejection);
            }
        }
        if ids.is_empty() {
            return reject(
                DeadLetterReason::NoId,
                format!(
                    "no id at `{}` or `{}`",
                    self.settings.identity_pointer, self.settings.guid_pointer
                ),
            );
        }

        let region = match self.region_of(&event) {
            Ok(r) => r,
            Err(rejection) => return Decoded::DeadLetter(rejection),
        };
        Decoded::Delete(DeletionRequest { region, ids })
    }

    fn collect_ids(
        &self,
        event: &Value,
        kind: IdKind,
        pointer: &str,
        out: &mut Vec<(IdKind, Arc<str>)>,
    ) -> Result<(), Rejection> {
        let bad = |reason, detail: String| Rejection { reason, detail };
        let values: Vec<&Value> = match event.pointer(pointer) {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(items)) => items.iter().collect(),
            Some(v) => vec![v],
        };
        for (i, v) in values.into_iter().enumerate() {
            let id = match v {
                Value::String(s) => s.as_str(),
                other => {
                    return Err(bad(
                        DeadLetterReason::InvalidId,
                        format!("{kind}[{i}] is {}, not a string", json_type(other)),
                    ))
                }
            };
            if id.trim().is_empty() {
                return Err(bad(
                    DeadLetterReason::InvalidId,
                    format!("{kind}[{i}] is empty"),
                ));
            }
            if id.len() > self.settings.max_id_bytes {
                return Err(bad(
                    DeadLetterReason::IdTooLong,
                    format!(
                        "{kind}[{i}] is {} bytes, above event.max_id_bytes = {}",
                        id.len(),
                        self.settings.max_id_bytes
                    ),
                ));
            }
            // A repeated id inside one event is one deletion.
            if !out
                .iter()
                .any(|(k, existing)| *k == kind && &**existing == id)
            {
                if out.len() >= self.settings.max_ids_per_event {
                    return Err(bad(
                        DeadLetterReason::TooManyIds,
                        format!(
                            "more than event.max_ids_per_event = {} ids",
                            self.settings.max_ids_per_event
                        ),
                    ));
                }
                out.push((kind, Arc::from(id)));
            }
        }
        Ok(())
    }

    fn region_of(&self, event: &Value) -> Result<RegionName, Rejection> {
        let named = if self.settings.region_pointer.is_empty() {
            None
        } else {
            match event.pointer(&self.settings.region_pointer) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.trim().is_empty() => Some(s.as_str()),
                Some(other) => {
                    return Err(Rejection {
                        reason: DeadLetterReason::UnknownRegion,
                        detail: format!("region is {}, not a region name", json_type(other)),
                    })
                }
            }
        };
        match named {
            Some(name) => self
                .regions
                .get(&name.trim().to_ascii_lowercase())
                .cloned()
                .ok_or_else(|| Rejection {
                    reason: DeadLetterReason::UnknownRegion,
                    // Region names are not personal data; cap the length anyway.
                    detail: format!(
                        "region `{}` has no [regions] table",
                        name.chars().take(32).collect::<String>()
                    ),
                }),
            None => self.default_region.clone().ok_or_else(|| Rejection {
                reason: DeadLetterReason::NoRegion,
                detail: format!(
                    "no region at `{}` and no event.default_region",
                    self.settings.region_pointer
                ),
            }),
        }
    }
}

/// How a JSON value's type reads in an error message ("a number").
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn decoder(default_region: Option<&str>) -> EventDecoder {
        let settings = EventSettings {
            default_region: default_region.map(str::to_string),
            max_ids_per_event: 5,
            max_id_bytes: 16,
            max_message_bytes: 512,
            ..EventSettings::default()
        };
        let regions: Vec<RegionAccount> = ["eu1", "in1"]
            .iter()
            .map(|n| RegionAccount {
                name: RegionName::new(n),
                account_id: "A".into(),
                passcode: Secret::new("p"),
                endpoint: "https://x".into(),
            })
            .collect();
        EventDecoder::new(&settings, &regions)
    }

    fn reason(d: &EventDecoder, payload: &[u8]) -> DeadLetterReason {
        match d.decode(Some(payload)) {
            Decoded::DeadLetter(r) => r.reason,
            other => panic!(
                "expected a dead letter for {:?}, got {other:?}",
                String::from_utf8_lossy(payload)
            ),
        }
    }

    #[test]
    fn decodes_both_kinds_strings_and_arrays() {
        let d = decoder(None);
        let got = d.decode(Some(
            br#"{"type":"user-deleted","region":"IN1","identity":["u1","u2","u1"],"guid":"g1"}"#,
        ));
        let Decoded::Delete(req) = got else {
            panic!("{got:?}")
        };
        assert_eq!(req.region, RegionName::new("in1"));
        let ids: Vec<(IdKind, &str)> = req.ids.iter().map(|(k, i)| (*k, &**i)).collect();
        assert_eq!(
            ids,
            vec![
                (IdKind::Identity, "u1"),
                (IdKind::Identity, "u2"),
                (IdKind::Guid, "g1")
            ]
        );
    }

    #[test]
    fn default_region_applies_when_missing() {
        let d = decoder(Some("eu1"));
        let Decoded::Delete(req) = d.decode(Some(br#"{"type":"user-deleted","guid":"g"}"#)) else {
            panic!()
        };
        assert_eq!(req.region, RegionName::new("eu1"));
    }

    #[test]
    fn other_types_are_skipped() {
        let d = decoder(Some("eu1"));
        assert_eq!(
            d.decode(Some(br#"{"type":"user-created","guid":"g"}"#)),
            Decoded::Skip
        );
        assert_eq!(d.decode(Some(br#"{"guid":"g"}"#)), Decoded::Skip);
    }

    #[test]
    fn every_bad_input_class_has_its_reason() {
        let d = decoder(None);
        assert_eq!(
            match d.decode(None) {
                Decoded::DeadLetter(r) => r.reason,
                _ => panic!(),
            },
            DeadLetterReason::Empty
        );
        assert_eq!(reason(&d, b""), DeadLetterReason::Empty);
        assert_eq!(reason(&d, &[b'{'; 600]), DeadLetterReason::TooLarge);
        assert_eq!(
            reason(&d, b"{\"guid\":\"\xff\xfe\"}"),
            DeadLetterReason::NotUtf8
        );
        assert_eq!(reason(&d, b"not json"), DeadLetterReason::NotJson);
        assert_eq!(
            reason(&d, br#"{"type":"user-deleted","guid":"g""#),
            DeadLetterReason::NotJson
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(reason(&d, deep.as_bytes()), DeadLetterReason::NotJson);
        let t = r#""type":"user-deleted","region":"eu1""#;
        assert_eq!(
            reason(&d, format!("{{{t}}}").as_bytes()),
            DeadLetterReason::NoId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"guid\":[]}}").as_bytes()),
            DeadLetterReason::NoId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"guid\":\"\"}}").as_bytes()),
            DeadLetterReason::InvalidId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"guid\":\"  \"}}").as_bytes()),
            DeadLetterReason::InvalidId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"guid\":42}}").as_bytes()),
            DeadLetterReason::InvalidId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"identity\":[\"a\",7]}}").as_bytes()),
            DeadLetterReason::InvalidId
        );
        assert_eq!(
            reason(&d, format!("{{{t},\"guid\":{{}}}}").as_bytes()),
            DeadLetterReason::InvalidId
        );
        assert_eq!(
            reason(
                &d,
                format!("{{{t},\"guid\":\"{}\"}}", "x".repeat(17)).as_bytes()
            ),
            DeadLetterReason::IdTooLong
        );
        assert_eq!(
            reason(
                &d,
                format!("{{{t},\"guid\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\"]}}").as_bytes()
            ),
            DeadLetterReason::TooManyIds
        );
        assert_eq!(
            reason(&d, br#"{"type":"user-deleted","guid":"g"}"#),
            DeadLetterReason::NoRegion
        );
        assert_eq!(
            reason(&d, br#"{"type":"user-deleted","guid":"g","region":"mars"}"#),
            DeadLetterReason::UnknownRegion
        );
        assert_eq!(
            reason(&d, br#"{"type":"user-deleted","guid":"g","region":5}"#),
            DeadLetterReason::UnknownRegion
        );
    }

    #[test]
    fn details_never_carry_ids() {
        let d = decoder(None);
        let payload = br#"{"type":"user-deleted","region":"eu1","guid":"secret-person-id-1"}"#;
        if let Decoded::DeadLetter(r) = d.decode(Some(payload)) {
            assert!(!r.detail.contains("secret-person"), "{}", r.detail);
        } else {
            panic!("id above 16 bytes must be refused");
        }
    }
}
