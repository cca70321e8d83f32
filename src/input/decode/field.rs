//! What the decoder reads of a field, whichever path found it: the four
//! fields it knows, a field's value as far as needed, and JSON type names.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The fields the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    Type,
    Identity,
    Guid,
    Region,
}

impl Which {
    pub(super) const ALL: [Which; 4] = [Which::Type, Which::Identity, Which::Guid, Which::Region];

    /// The field's bit in a set of fields (`u8`).
    pub(super) fn bit(self) -> u8 {
        1 << self as u8
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Which::Type => "type",
            Which::Identity => "identity",
            Which::Guid => "guid",
            Which::Region => "region",
        }
    }
}

/// A field's value, as much as the decoder needs of it; strings borrow from
/// the payload where JSON needs no unescaping.
#[derive(Debug, Clone)]
pub(super) enum Field<'a> {
    Null,
    Str(Cow<'a, str>),
    Array(Vec<Item<'a>>),
    /// Any other JSON type, by the name used in messages.
    Other(&'static str),
}

#[derive(Debug, Clone)]
pub(super) enum Item<'a> {
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl<'a> Field<'a> {
    pub(super) fn from_value(v: &'a Value) -> Field<'a> {
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

    pub(super) fn from_sonic(v: &'a sonic_rs::Value) -> Field<'a> {
        use sonic_rs::{JsonContainerTrait, JsonType, JsonValueTrait};
        match (v.get_type(), v.as_str(), v.as_array()) {
            (JsonType::Null, ..) => Field::Null,
            (_, Some(s), _) => Field::Str(Cow::Borrowed(s)),
            (_, _, Some(items)) => Field::Array(
                items
                    .iter()
                    .map(|i| match i.as_str() {
                        Some(s) => Item::Str(Cow::Borrowed(s)),
                        None => Item::Other(sonic_type(i.get_type())),
                    })
                    .collect(),
            ),
            (other, ..) => Field::Other(sonic_type(other)),
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Str(_) => "a string",
            Field::Array(_) => "an array",
            Field::Other(t) => t,
        }
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

/// [`json_type`] of a sonic-rs value.
fn sonic_type(t: sonic_rs::JsonType) -> &'static str {
    use sonic_rs::JsonType;
    match t {
        JsonType::Null => "null",
        JsonType::Boolean => "a boolean",
        JsonType::Number => "a number",
        JsonType::String => "a string",
        JsonType::Array => "an array",
        JsonType::Object => "an object",
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
