//! The fast path: when every pointer is a top-level key. A plain event is
//! parsed by sonic-rs and its keys looked up; within a CloudEvents envelope,
//! the data's keys are read in the envelope's one serde pass (`FlatEvent`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::config::EventSettings;
use crate::input::decode::field::{Field, Which};

/// Top-level key names when every configured pointer is one segment (`/name`):
/// the decoder then reads just those keys, without building a JSON tree.
#[derive(Debug, Clone)]
pub(super) struct FlatKeys {
    names: [Option<String>; 4],
}

impl FlatKeys {
    pub(super) fn from_settings(s: &EventSettings) -> Option<FlatKeys> {
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

    /// Parses `json` (sonic-rs), finds which of the keys appear more than
    /// once at the top level and where each appears first.
    pub(super) fn read(&self, json: &str) -> sonic_rs::Result<ParsedEvent> {
        use sonic_rs::JsonContainerTrait;
        // From a `str`: sonic-rs does not check UTF-8 again.
        let value: sonic_rs::Value = sonic_rs::from_str(json)?;
        let (mut seen, mut repeated) = (0u8, 0u8);
        let mut at = [None; 4];
        let pairs = value.as_object().into_iter().flat_map(|o| o.iter());
        for (position, (key, _)) in pairs.enumerate() {
            if let Some(i) = self.slot(key) {
                repeated |= seen & (1 << i);
                seen |= 1 << i;
                at[i] = at[i].or(Some(position));
            }
        }
        Ok(ParsedEvent {
            value,
            repeated,
            at,
        })
    }
}

/// A plain event as sonic-rs parsed it, with where the four keys are (so
/// each is found without comparing key names again).
pub(super) struct ParsedEvent {
    pub(super) value: sonic_rs::Value,
    /// Bits of [`Which::bit`]: keys that appear more than once.
    pub(super) repeated: u8,
    /// Position among the top-level pairs of each key's first appearance.
    at: [Option<usize>; 4],
}

impl ParsedEvent {
    pub(super) fn get(&self, which: Which) -> Option<&sonic_rs::Value> {
        use sonic_rs::JsonContainerTrait;
        let position = self.at[which as usize]?;
        let (_, value) = self.value.as_object()?.iter().nth(position)?;
        Some(value)
    }
}

/// The values found for the four keys, and which keys appeared more than
/// once (bits of [`Which::bit`]; the value kept then does not matter).
pub(super) struct FlatFields<'a> {
    pub(super) values: [Option<Field<'a>>; 4],
    pub(super) repeated: u8,
    /// The JSON value read is an object (else no field is present).
    pub(super) object: bool,
}

impl<'a> FlatFields<'a> {
    pub(super) fn take(&self, which: Which) -> Option<Field<'a>> {
        // Fields are read once each; cloning keeps `decide`'s lookups simple.
        self.values[which as usize].clone()
    }
}

#[derive(Clone, Copy)]
pub(super) struct FlatEvent<'k>(pub(super) &'k FlatKeys);

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
        Ok(FlatFields {
            values,
            repeated,
            object: true,
        })
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
            object: false,
        }
    }
}
