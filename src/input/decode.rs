//! Turns a Kafka message payload into a deletion request, a skip, or a
//! dead-letter verdict with a reason. Never panics on input.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{EventSettings, RegionAccount};
use crate::domain::ids::{IdKind, RegionName};

pub use crate::domain::outcome::DeadLetterReason;

pub use crate::domain::event::{Decoded, DeletionRequest, Rejection};

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

    /// The verdict, given the fields whose key (or a key on the way to it)
    /// appears twice in one object (bits of [`Which::bit`]) and a way to look
    /// up each configured field.
    fn decide<'a>(
        &self,
        repeated: u8,
        mut field: impl FnMut(Which) -> Option<Field<'a>>,
    ) -> Decoded {
        let is_repeated = |which: Which| repeated & which.bit() != 0;
        if !self.settings.type_pointer.is_empty() {
            if is_repeated(Which::Type) {
                return self.repeated_key(Which::Type);
            }
            match field(Which::Type) {
                Some(Field::Str(t)) => {
                    if !self.accept_types.contains(t.as_ref()) {
                        return Decoded::Skip;
                    }
                }
                // No usable type: a deletion with a broken type must not be
                // skipped, but a message with no id at all is no deletion.
                untyped => {
                    let carries_ids = [Which::Identity, Which::Guid].into_iter().any(|which| {
                        is_repeated(which)
                            || match field(which) {
                                None | Some(Field::Null) => false,
                                Some(Field::Array(items)) => !items.is_empty(),
                                Some(_) => true,
                            }
                    });
                    if !carries_ids {
                        return Decoded::Skip;
                    }
                    let pointer = &self.settings.type_pointer;
                    return reject(
                        DeadLetterReason::MissingType,
                        match untyped {
                            None => format!("no type at `{pointer}`, but the event carries ids"),
                            Some(t) => {
                                format!("type at `{pointer}` is {}, not a string", t.type_name())
                            }
                        },
                    );
                }
            }
        }
        for which in [Which::Identity, Which::Guid, Which::Region] {
            if is_repeated(which) {
                return self.repeated_key(which);
            }
        }

        let mut ids: Vec<(IdKind, Arc<str>)> = Vec::new();
        for (kind, which) in [
            (IdKind::Identity, Which::Identity),
            (IdKind::Guid, Which::Guid),
        ] {
            if let Err(rejection) = self.collect_ids(field(which), kind, &mut ids) {
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

        let region = match self.region_of(field(Which::Region)) {
            Ok(r) => r,
            Err(rejection) => return Decoded::DeadLetter(rejection),
        };
        Decoded::Delete(DeletionRequest { region, ids })
    }

    fn pointer(&self, which: Which) -> &str {
        match which {
            Which::Type => &self.settings.type_pointer,
            Which::Identity => &self.settings.identity_pointer,
            Which::Guid => &self.settings.guid_pointer,
            Which::Region => &self.settings.region_pointer,
        }
    }

    fn repeated_key(&self, which: Which) -> Decoded {
        reject(
            DeadLetterReason::DuplicateKey,
            format!(
                "`{}` is ambiguous: its key, or one on the way to it, appears twice in one object",
                self.pointer(which)
            ),
        )
    }

    fn collect_ids(
        &self,
        field: Option<Field<'_>>,
        kind: IdKind,
        out: &mut Vec<(IdKind, Arc<str>)>,
    ) -> Result<(), Rejection> {
        let bad = |reason, detail: String| Rejection { reason, detail };
        let items: Vec<Item<'_>> = match field {
            None | Some(Field::Null) => return Ok(()),
            Some(Field::Array(items)) => items,
            Some(Field::Str(s)) => vec![Item::Str(s)],
            Some(Field::Other(t)) => vec![Item::Other(t)],
        };
        for (i, item) in items.into_iter().enumerate() {
            let id = match item {
                Item::Str(s) => s,
                Item::Other(t) => {
                    return Err(bad(
                        DeadLetterReason::InvalidId,
                        format!("{kind}[{i}] is {t}, not a string"),
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
                .any(|(k, existing)| *k == kind && **existing == *id)
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
                out.push((kind, Arc::from(id.as_ref())));
            }
        }
        Ok(())
    }

    fn region_of(&self, field: Option<Field<'_>>) -> Result<RegionName, Rejection> {
        let named = match field {
            None | Some(Field::Null) => None,
            Some(Field::Str(s)) if !s.trim().is_empty() => Some(s),
            Some(other) => {
                return Err(Rejection {
                    reason: DeadLetterReason::UnknownRegion,
                    detail: format!("region is {}, not a region name", other.type_name()),
                })
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

/// Deepest JSON nesting accepted, in levels of arrays and objects. serde_json
/// refuses a document nested 128 deep (its recursion limit) and accepts 127.
/// The fast path skips unread values without counting levels, so both paths
/// check this first and refuse exactly what serde_json refuses.
const MAX_NESTING: usize = 127;

/// Whether arrays and objects nest deeper than `limit`, ignoring brackets
/// inside strings. One pass over the bytes, no allocation.
fn nested_deeper_than(payload: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in payload {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The fields the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Type,
    Identity,
    Guid,
    Region,
}

impl Which {
    /// The field's bit in a set of fields (`u8`).
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A field's value, as much as the decoder needs of it; strings borrow from
/// the payload where JSON needs no unescaping.
#[derive(Debug)]
enum Field<'a> {
    Null,
    Str(Cow<'a, str>),
    Array(Vec<Item<'a>>),
    /// Any other JSON type, by the name used in messages.
    Other(&'static str),
}

#[derive(Debug)]
enum Item<'a> {
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl<'a> Field<'a> {
    fn from_value(v: &'a Value) -> Field<'a> {
        match v {
            Value::Null => Field::Null,
            Value::String(s) => Field::Str(Cow::Borrowed(s)),
            Value::Array(items) => Field::Array(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => Item::Str(Cow::Borrowed(s)),
                        other => Item::Other(json_type(other)),
                    })
                    .collect(),
            ),
            other => Field::Other(json_type(other)),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Str(_) => "a string",
            Field::Array(_) => "an array",
            Field::Other(t) => t,
        }
    }
}

/// Top-level key names when every configured pointer is one segment (`/name`):
/// the decoder then reads just those keys, without building a JSON tree.
#[derive(Debug, Clone)]
struct FlatKeys {
    names: [Option<String>; 4],
}

impl FlatKeys {
    fn from_settings(s: &EventSettings) -> Option<FlatKeys> {
        let one = |p: &str| -> Result<Option<String>, ()> {
            if p.is_empty() {
                return Ok(None);
            }
            let name = p.strip_prefix('/').ok_or(())?;
            if name.contains('/') {
                return Err(());
            }
            Ok(Some(name.replace("~1", "/").replace("~0", "~")))
        };
        Some(FlatKeys {
            names: [
                one(&s.type_pointer).ok()?,
                one(&s.identity_pointer).ok()?,
                one(&s.guid_pointer).ok()?,
                one(&s.region_pointer).ok()?,
            ],
        })
    }

    fn slot(&self, key: &str) -> Option<usize> {
        self.names.iter().position(|n| n.as_deref() == Some(key))
    }
}

/// The values found for the four keys, and which keys appeared more than
/// once (bits of [`Which::bit`]; the value kept then does not matter).
struct FlatFields<'a> {
    values: [Option<Field<'a>>; 4],
    repeated: u8,
}

impl<'a> FlatFields<'a> {
    fn take(&self, which: Which) -> Option<Field<'a>> {
        // Fields are read once each; cloning keeps `decide`'s lookups simple.
        self.values[which as usize].as_ref().map(|f| match f {
            Field::Null => Field::Null,
            Field::Str(s) => Field::Str(s.clone()),
            Field::Array(items) => Field::Array(
                items
                    .iter()
                    .map(|i| match i {
                        Item::Str(s) => Item::Str(s.clone()),
                        Item::Other(t) => Item::Other(t),
                    })
                    .collect(),
            ),
            Field::Other(t) => Field::Other(t),
        })
    }
}

struct FlatEvent<'k>(&'k FlatKeys);

impl<'de> DeserializeSeed<'de> for FlatEvent<'_> {
    type Value = FlatFields<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlatEvent<'_> {
    type Value = FlatFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: [Option<Field<'de>>; 4] = [None, None, None, None];
        let mut repeated = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.0.slot(&key) {
                Some(i) => {
                    if values[i].is_some() {
                        repeated |= 1 << i;
                    }
                    values[i] = Some(map.next_value::<Field<'de>>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(FlatFields { values, repeated })
    }

    // Not an object: no field is present (as `Value::pointer` would find).
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FlatFields::absent())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FlatFields::absent())
    }
}

impl FlatFields<'_> {
    fn absent() -> Self {
        FlatFields {
            values: [None, None, None, None],
            repeated: 0,
        }
    }
}

/// The segments of each configured pointer, unescaped (`None`: not set), in
/// [`Which`] order.
#[derive(Debug, Clone)]
struct PointerPaths([Option<Vec<String>>; 4]);

impl PointerPaths {
    fn from_settings(s: &EventSettings) -> PointerPaths {
        let segments = |p: &str| -> Option<Vec<String>> {
            (!p.is_empty()).then(|| {
                p.split('/')
                    .skip(1)
                    .map(|x| x.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
        };
        PointerPaths([
            segments(&s.type_pointer),
            segments(&s.identity_pointer),
            segments(&s.guid_pointer),
            segments(&s.region_pointer),
        ])
    }

    /// Of the fields in `on` (bits), those whose pointer's segment number
    /// `depth` satisfies `matches`.
    fn continuing(&self, on: u8, depth: usize, matches: impl Fn(&str) -> bool) -> u8 {
        let mut bits = 0;
        for (i, path) in self.0.iter().enumerate() {
            if on & (1 << i) != 0 {
                if let Some(segment) = path.as_ref().and_then(|p| p.get(depth)) {
                    if matches(segment) {
                        bits |= 1 << i;
                    }
                }
            }
        }
        bits
    }
}

/// An array index in a JSON pointer, as `Value::pointer` reads it.
fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

/// Builds the JSON tree like `Value`'s own deserializer (the last of
/// repeated keys wins) while following the configured pointers: in every
/// object on the way to a field it notes keys seen twice, by scanning the
/// few pointer segments at that depth (no set of keys is built).
struct PathTracker<'p> {
    paths: &'p PointerPaths,
    /// Segments matched so far.
    depth: usize,
    /// The fields whose pointer this value lies on (bits of [`Which::bit`]).
    on: u8,
    /// Where the fields with a repeated key are added.
    repeated: &'p Cell<u8>,
}

impl<'p> PathTracker<'p> {
    fn root(paths: &'p PointerPaths, repeated: &'p Cell<u8>) -> Self {
        let on = (0..4)
            .filter(|&i| paths.0[i].is_some())
            .fold(0, |bits, i| bits | 1 << i);
        PathTracker {
            paths,
            depth: 0,
            on,
            repeated,
        }
    }

    fn child(&self, on: u8) -> Self {
        PathTracker {
            paths: self.paths,
            depth: self.depth + 1,
            on,
            repeated: self.repeated,
        }
    }
}

impl<'de> DeserializeSeed<'de> for PathTracker<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathTracker<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let i = items.len();
            let next = self
                .paths
                .continuing(self.on, self.depth, |s| parse_index(s) == Some(i));
            let item = if next == 0 {
                seq.next_element::<Value>()?
            } else {
                seq.next_element_seed(self.child(next))?
            };
            match item {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        // The fields whose key at this depth was seen already.
        let mut seen = 0;
        while let Some(key) = map.next_key::<String>()? {
            let next = self.paths.continuing(self.on, self.depth, |s| s == key);
            let value = if next == 0 {
                map.next_value::<Value>()?
            } else {
                self.repeated.set(self.repeated.get() | (seen & next));
                seen |= next;
                map.next_value_seed(self.child(next))?
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads any JSON value into a [`Field`], consuming nested values it does not keep.
impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Field::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Field::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Other("a number"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an object"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Field<'de>>()? {
                    items.push(match item {
                        Field::Str(s) => Item::Str(s),
                        other => Item::Other(other.type_name()),
                    });
                }
                Ok(Field::Array(items))
            }
        }
        d.deserialize_any(V)
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
mod tests;
