//! The JSON-tree path, for nested pointers: builds the tree while following
//! the configured pointers, noting keys repeated on the way to a field.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::config::EventSettings;

/// The segments of each configured pointer, unescaped (`None`: not set), in
/// [`Which`](super::field::Which) order.
#[derive(Debug, Clone)]
pub(super) struct PointerPaths([Option<Vec<String>>; 4]);

impl PointerPaths {
    pub(super) fn from_settings(s: &EventSettings) -> PointerPaths {
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
#[derive(Clone, Copy)]
pub(super) struct PathTracker<'p> {
    paths: &'p PointerPaths,
    /// Segments matched so far.
    depth: usize,
    /// The fields whose pointer this value lies on (bits of [`Which::bit`](super::field::Which::bit)).
    on: u8,
    /// Where the fields with a repeated key are added.
    repeated: &'p Cell<u8>,
}

impl<'p> PathTracker<'p> {
    pub(super) fn root(paths: &'p PointerPaths, repeated: &'p Cell<u8>) -> Self {
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
