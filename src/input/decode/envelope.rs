//! A structured-mode CloudEvent's envelope, read in one pass: the
//! attributes the decoder needs, `data` through the data seed (the fast path
//! or the JSON tree), and everything else skipped.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::input::decode::field::{Field, Which};

/// The keys of a structured-mode envelope the decoder reads besides `data`,
/// in the order of [`Envelope::attributes`].
const ENVELOPE_KEYS: [&str; 6] = [
    "specversion",
    "type",
    "id",
    "source",
    "datacontenttype",
    "data_base64",
];

/// [`Envelope::repeated`]'s bit for `data`.
const DATA_BIT: u8 = 1 << 6;

/// What the decoder reads of a structured-mode envelope.
pub(super) struct Envelope<'de, D> {
    /// By [`ENVELOPE_KEYS`].
    pub(super) attributes: [Option<Field<'de>>; 6],
    /// `data`, read by the data seed (the fast path or the JSON tree).
    pub(super) data: Option<D>,
    /// Per field ([`Which`]) configured as a `ce_<attr>` header, the attribute.
    pub(super) fields: [Option<Field<'de>>; 4],
    /// Keys seen twice: bits by [`ENVELOPE_KEYS`], and [`DATA_BIT`].
    pub(super) repeated: u8,
    /// Field attributes seen twice, bits of [`Which::bit`].
    pub(super) fields_repeated: u8,
    /// The payload is a JSON object.
    pub(super) object: bool,
}

impl<'de, D> Envelope<'de, D> {
    fn empty() -> Self {
        Envelope {
            attributes: Default::default(),
            data: None,
            fields: Default::default(),
            repeated: 0,
            fields_repeated: 0,
            object: false,
        }
    }

    pub(super) fn map_data<E>(self, f: impl FnOnce(D) -> E) -> Envelope<'de, E> {
        Envelope {
            attributes: self.attributes,
            data: self.data.map(f),
            fields: self.fields,
            repeated: self.repeated,
            fields_repeated: self.fields_repeated,
            object: self.object,
        }
    }
}

/// Reads an envelope in one pass: `data` with the data seed `S`, the
/// attributes as [`Field`]s, everything else skipped.
pub(super) struct EnvelopeSeed<'k, S> {
    pub(super) data: S,
    pub(super) attributes: &'k [Option<String>; 4],
}

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for EnvelopeSeed<'_, S> {
    type Value = Envelope<'de, S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for EnvelopeSeed<'_, S> {
    type Value = Envelope<'de, S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope::empty();
        envelope.object = true;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "data" {
                if envelope.data.is_some() {
                    envelope.repeated |= DATA_BIT;
                }
                envelope.data = Some(map.next_value_seed(self.data)?);
                continue;
            }
            let attribute = ENVELOPE_KEYS.iter().position(|k| *k == key);
            let fields = Which::ALL
                .into_iter()
                .filter(|&w| self.attributes[w as usize].as_deref() == Some(&*key))
                .fold(0u8, |bits, w| bits | w.bit());
            if attribute.is_none() && fields == 0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Field<'de> = map.next_value()?;
            if let Some(i) = attribute {
                if envelope.attributes[i].is_some() {
                    envelope.repeated |= 1 << i;
                }
                envelope.attributes[i] = Some(value.clone());
            }
            for which in Which::ALL {
                if fields & which.bit() != 0 {
                    let slot = &mut envelope.fields[which as usize];
                    if slot.is_some() {
                        envelope.fields_repeated |= which.bit();
                    }
                    *slot = Some(value.clone());
                }
            }
        }
        Ok(envelope)
    }

    // Not an object: not an envelope.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Envelope::empty())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Envelope::empty())
    }
}
