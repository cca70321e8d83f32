//! Turns a Kafka message (payload and headers) into a deletion request, a
//! skip, or a dead-letter verdict with a reason. Never panics on input.
//!
//! Two formats (`event.format`): `json`, where the payload is the event, and
//! `cloudevents`, CloudEvents 1.0 in the Kafka protocol binding (module
//! `cloudevents`): structured mode, a JSON envelope (read in one pass by
//! `envelope`), or binary mode, the attributes in `ce_*` headers. The JSON
//! the pointers apply to (the event, or a CloudEvent's data) is read by one
//! of two paths that must agree: `flat` (top-level keys, no JSON tree) and
//! `tree` (nested pointers); `field` is what both return, `given` the fields
//! headers give, `checks` the verdict on them.

mod checks;
mod cloudevents;
mod envelope;
mod field;
mod flat;
mod given;
mod tree;

use std::cell::Cell;

use serde::de::DeserializeSeed;
use serde_json::Value;
use sonic_rs::JsonValueTrait;

use crate::config::{EventFormat, EventSettings, RegionAccount};
use crate::domain::ids::RegionName;

pub use crate::domain::outcome::DeadLetterReason;

pub use crate::domain::event::{CloudEventRef, Decoded, DeletionRequest, Rejection};

pub use cloudevents::MAX_ATTRIBUTE_BYTES;
pub use field::json_type;

use checks::{not_json, not_json_at, readable, reject, Checked};
use field::{Field, Which};
use flat::{FlatEvent, FlatFields, FlatKeys, ParsedEvent};
use given::{slot, HeaderValues, CLOUDEVENT_HEADERS};
use tree::{PathTracker, PointerPaths};

/// Payloads opening more brackets than this are read by serde_json.
const SONIC_BRACKETS: usize = 32;

/// The JSON the pointers are read in (the payload, or a CloudEvent's data),
/// as either path read it.
enum Fields<'a> {
    /// Read in one serde pass (within a CloudEvents envelope, or nested deep).
    Flat(FlatFields<'a>),
    /// Top-level keys only: sonic-rs's tree (it keeps repeated keys).
    Parsed(ParsedEvent),
    Tree {
        value: Value,
        repeated: u8,
    },
}

impl Fields<'_> {
    /// Bits of [`Which::bit`]: the field's key (or one on the way to it)
    /// appeared twice in one object.
    fn repeated(&self) -> u8 {
        match self {
            Fields::Flat(f) => f.repeated,
            Fields::Parsed(parsed) => parsed.repeated,
            Fields::Tree { repeated, .. } => *repeated,
        }
    }

    fn is_object(&self) -> bool {
        match self {
            Fields::Flat(f) => f.object,
            Fields::Parsed(parsed) => parsed.value.is_object(),
            Fields::Tree { value, .. } => value.is_object(),
        }
    }
}

/// Decodes messages according to `[event]` settings.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    /// As configured, except that with CloudEvents `type_pointer` is empty
    /// (the type is the `type` attribute; the pointers are read in `data`).
    settings: EventSettings,
    /// Set when every pointer is a top-level key: the fast path.
    flat: Option<FlatKeys>,
    /// The pointers' segments, for the JSON-tree path.
    paths: PointerPaths,
    // A handful of each: a scan costs less than hashing the name (the type
    // is looked up for every event, skipped ones too).
    accept_types: Box<[Box<str>]>,
    /// Lower case (as [`RegionName`] keeps them).
    regions: Box<[RegionName]>,
    default_region: Option<RegionName>,
    /// Header names by slot; `None`: not read.
    headers: [Option<String>; slot::COUNT],
    /// CloudEvents only: per field ([`Which`]), the attribute its `ce_<attr>`
    /// header names, read from the envelope in structured mode.
    attributes: [Option<String>; 4],
    /// Some header is read: otherwise a message's headers are not looked at.
    reads_headers: bool,
}

impl EventDecoder {
    pub fn new(settings: &EventSettings, regions: &[RegionAccount]) -> Self {
        let cloudevents = settings.format == EventFormat::CloudEvents;
        let mut settings = settings.clone();
        if cloudevents {
            settings.type_pointer.clear();
        }
        let mut headers: [Option<String>; slot::COUNT] = Default::default();
        if cloudevents {
            for (i, name) in CLOUDEVENT_HEADERS.iter().enumerate() {
                headers[i] = Some(name.to_string());
            }
        }
        let mut attributes: [Option<String>; 4] = Default::default();
        let named = [
            &settings.type_header,
            &settings.identity_header,
            &settings.guid_header,
            &settings.region_header,
        ];
        for (i, name) in named.into_iter().enumerate() {
            headers[slot::FIELDS + i] = name.clone();
            if cloudevents {
                attributes[i] = name
                    .as_deref()
                    .and_then(|n| n.strip_prefix("ce_"))
                    .map(str::to_string);
            }
        }
        EventDecoder {
            flat: FlatKeys::from_settings(&settings),
            paths: PointerPaths::from_settings(&settings),
            accept_types: settings
                .accept_types
                .iter()
                .map(|t| t.as_str().into())
                .collect(),
            regions: regions.iter().map(|r| r.name.clone()).collect(),
            default_region: settings.default_region.as_deref().map(RegionName::new),
            reads_headers: headers.iter().any(Option::is_some),
            headers,
            attributes,
            settings,
        }
    }

    /// Decodes a message that has no headers.
    pub fn decode(&self, payload: Option<&[u8]>) -> Decoded {
        self.decode_message(payload, std::iter::empty())
    }

    /// Decodes a message: its payload, and its headers as (key, value) pairs
    /// in order (see [`crate::input::headers`]); they are looked at only when
    /// `event.format = "cloudevents"` or an `event.*_header` is set.
    pub fn decode_message<'h>(
        &self,
        payload: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    ) -> Decoded {
        let headers = if self.reads_headers {
            self.read_headers(headers)
        } else {
            HeaderValues::none()
        };
        match self.settings.format {
            EventFormat::Json => {
                let fields = match self.checked(payload).and_then(|p| self.fields(p, "")) {
                    Ok(f) => f,
                    Err(verdict) => return verdict,
                };
                self.decide(&fields, &self.given(&headers, false))
            }
            EventFormat::CloudEvents => self.decode_cloudevent(payload, &headers),
        }
    }

    /// The checks every payload passes first: present, not too large, UTF-8,
    /// not nested too deep.
    fn checked<'p>(&self, payload: Option<&'p [u8]>) -> Result<Checked<'p>, Decoded> {
        let payload = match payload {
            Some(p) if !p.is_empty() => p,
            _ => {
                return Err(reject(
                    DeadLetterReason::Empty,
                    "the message has no payload",
                ))
            }
        };
        if payload.len() > self.settings.max_message_bytes {
            return Err(reject(
                DeadLetterReason::TooLarge,
                format!(
                    "payload is {} bytes, above event.max_message_bytes = {}",
                    payload.len(),
                    self.settings.max_message_bytes
                ),
            ));
        }
        readable(payload, "")
    }

    /// Reads the configured pointers' fields in `json` (on the fast path or
    /// through a JSON tree); `within` starts a `not_json` detail.
    fn fields<'p>(&self, json: Checked<'p>, within: &str) -> Result<Fields<'p>, Decoded> {
        let mut de = serde_json::Deserializer::from_str(json.text);
        match &self.flat {
            // sonic-rs's tree keeps repeated keys and checks every value as
            // serde_json's tree does; the decoder costs 5-12 % less than with
            // serde's one pass (docs/PERFORMANCE.md). It recurses per level
            // (deep frames in a debug build), so deep nesting takes serde's
            // path; events nest two levels.
            Some(keys) if json.brackets <= SONIC_BRACKETS => keys
                .read(json.text)
                .map(Fields::Parsed)
                .map_err(|e| not_json_at(e.line(), e.column(), e.classify(), within)),
            Some(keys) => FlatEvent(keys)
                .deserialize(&mut de)
                .and_then(|f| de.end().map(|()| f))
                .map(Fields::Flat)
                .map_err(|e| not_json(e, within)),
            None => {
                let repeated = Cell::new(0);
                PathTracker::root(&self.paths, &repeated)
                    .deserialize(&mut de)
                    .and_then(|v| de.end().map(|()| v))
                    .map(|value| Fields::Tree {
                        value,
                        repeated: repeated.get(),
                    })
                    .map_err(|e| not_json(e, within))
            }
        }
    }

    /// The field at `which`'s pointer, if any.
    fn lookup<'f>(&self, fields: &'f Fields<'_>, which: Which) -> Option<Field<'f>> {
        match fields {
            Fields::Flat(f) => f.take(which),
            Fields::Parsed(parsed) => parsed.get(which).map(Field::from_sonic),
            Fields::Tree { value, .. } => {
                let pointer = self.pointer(which);
                if pointer.is_empty() {
                    return None;
                }
                value.pointer(pointer).map(Field::from_value)
            }
        }
    }
}

// Names the unit tests (`tests.rs`, `use super::*`) take from here.
#[cfg(test)]
use {crate::domain::ids::IdKind, checks::nested_deeper_than};

#[cfg(test)]
mod tests;
