//! Turns a Kafka message payload into a deletion request, a skip, or a
//! dead-letter verdict with a reason. Never panics on input.
//!
//! Two paths find the fields: `flat` (top-level keys, no JSON tree) and `tree`
//! (nested pointers); `field` is what both return, `checks` the verdict on it.

mod checks;
mod field;
mod flat;
mod tree;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use serde::de::DeserializeSeed;

use crate::config::{EventSettings, RegionAccount};
use crate::domain::ids::RegionName;

pub use crate::domain::outcome::DeadLetterReason;

pub use crate::domain::event::{Decoded, DeletionRequest, Rejection};

pub use field::json_type;

use checks::{nested_deeper_than, reject, MAX_NESTING};
use field::Field;
use flat::{FlatEvent, FlatKeys};
use tree::{PathTracker, PointerPaths};

/// Decodes payloads according to `[event]` settings.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    settings: EventSettings,
    /// Set when every pointer is a top-level key: the fast path.
    flat: Option<FlatKeys>,
    /// The pointers' segments, for the JSON-tree path.
    paths: PointerPaths,
    accept_types: HashSet<String>,
    regions: HashMap<String, RegionName>,
    default_region: Option<RegionName>,
}

impl EventDecoder {
    pub fn new(settings: &EventSettings, regions: &[RegionAccount]) -> Self {
        EventDecoder {
            flat: FlatKeys::from_settings(settings),
            paths: PointerPaths::from_settings(settings),
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
        if nested_deeper_than(payload, MAX_NESTING) {
            return reject(
                DeadLetterReason::NotJson,
                format!("nesting deeper than {MAX_NESTING} levels"),
            );
        }
        let not_json = |e: serde_json::Error| {
            reject(
                DeadLetterReason::NotJson,
                format!(
                    "line {} column {}: {:?}",
                    e.line(),
                    e.column(),
                    e.classify()
                ),
            )
        };
        match &self.flat {
            Some(keys) => {
                let mut de = serde_json::Deserializer::from_slice(payload);
                let fields = match FlatEvent(keys)
                    .deserialize(&mut de)
                    .and_then(|f| de.end().map(|()| f))
                {
                    Ok(f) => f,
                    Err(e) => return not_json(e),
                };
                self.decide(fields.repeated, |which| fields.take(which))
            }
            None => {
                let repeated = Cell::new(0);
                let mut de = serde_json::Deserializer::from_slice(payload);
                let event = match PathTracker::root(&self.paths, &repeated)
                    .deserialize(&mut de)
                    .and_then(|v| de.end().map(|()| v))
                {
                    Ok(v) => v,
                    Err(e) => return not_json(e),
                };
                self.decide(repeated.get(), |which| {
                    let pointer = self.pointer(which);
                    if pointer.is_empty() {
                        return None;
                    }
                    event.pointer(pointer).map(Field::from_value)
                })
            }
        }
    }
}

// Names the unit tests (`tests.rs`, `use super::*`) take from here.
#[cfg(test)]
use {crate::domain::ids::IdKind, serde_json::Value};

#[cfg(test)]
mod tests;
