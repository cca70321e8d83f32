//! CloudEvents 1.0 in the Kafka protocol binding (`event.format =
//! "cloudevents"`): which mode a message is in, the required attributes
//! (the type filter comes first, so another type's data may be anything),
//! and the data the pointers are read in.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;

use base64::Engine as _;
use serde::de::DeserializeSeed;

use crate::domain::event::CloudEventRef;
use crate::input::decode::checks::{not_json, readable, reject};
use crate::input::decode::envelope::{Envelope, EnvelopeSeed};
use crate::input::decode::field::{Field, Which};
use crate::input::decode::flat::FlatEvent;
use crate::input::decode::given::{slot, HeaderValues};
use crate::input::decode::tree::PathTracker;
use crate::input::decode::{DeadLetterReason, Decoded, EventDecoder, Fields};

/// An envelope error: `invalid_cloudevent` with its detail.
fn invalid_cloudevent(detail: impl Into<String>) -> Decoded {
    reject(DeadLetterReason::InvalidCloudevent, detail)
}

/// Longest CloudEvents `id` or `source` accepted, in bytes: both are copied
/// into audit records.
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// A CloudEvents attribute as the decoder reads it: absent (or null), text,
/// or something else (named as in messages: "a number", "invalid UTF-8").
type Attribute<'a> = Option<Result<Cow<'a, str>, &'static str>>;

impl EventDecoder {
    /// `event.format = "cloudevents"`: structured mode when the content
    /// type says so, else binary mode when a `ce_specversion` header is there.
    pub(super) fn decode_cloudevent(
        &self,
        payload: Option<&[u8]>,
        headers: &HeaderValues<'_>,
    ) -> Decoded {
        if headers.repeated(slot::CONTENT_TYPE) {
            return reject(
                DeadLetterReason::DuplicateKey,
                "header `content-type` appears twice",
            );
        }
        let content_type = match headers.get(slot::CONTENT_TYPE).map(std::str::from_utf8) {
            None => None,
            Some(Ok(ct)) => Some(ct),
            Some(Err(_)) => return invalid_cloudevent("header `content-type` is not UTF-8"),
        };
        if let Some(ct) = content_type {
            if starts_with_ignore_case(ct, "application/cloudevents") {
                return self.structured(payload, ct, headers);
            }
        }
        if headers.get(slot::SPECVERSION).is_some() {
            return self.binary(payload, content_type, headers);
        }
        match payload {
            Some(p) if !p.is_empty() => reject(
                DeadLetterReason::NotCloudevent,
                "neither structured mode (header `content-type: application/cloudevents+json`) \
                 nor binary mode (header `ce_specversion`)",
            ),
            _ => reject(DeadLetterReason::Empty, "the message has no payload"),
        }
    }

    /// Binary mode: attributes in `ce_*` headers, the payload is the data.
    /// The type filter comes before any look at the payload: another type's
    /// data may be anything (Avro, nothing at all).
    fn binary(
        &self,
        payload: Option<&[u8]>,
        content_type: Option<&str>,
        headers: &HeaderValues<'_>,
    ) -> Decoded {
        let attribute = |slot: usize| -> Attribute<'_> {
            headers.get(slot).map(|v| {
                std::str::from_utf8(v)
                    .map(Cow::Borrowed)
                    .map_err(|_| "invalid UTF-8")
            })
        };
        let attributes = [
            attribute(slot::SPECVERSION),
            attribute(slot::TYPE),
            attribute(slot::ID),
            attribute(slot::SOURCE),
        ];
        let repeated = [slot::SPECVERSION, slot::TYPE, slot::ID, slot::SOURCE]
            .iter()
            .enumerate()
            .filter(|(_, &s)| headers.repeated(s))
            .fold(0u8, |bits, (i, _)| bits | 1 << i);
        let cloud_event = match self.identify(attributes, repeated, true) {
            Ok(ce) => ce,
            Err(verdict) => return verdict,
        };
        if let Some(ct) = content_type {
            if !is_json_media_type(ct) {
                return invalid_cloudevent(format!(
                    "the data is `{}` (header `content-type`), not JSON",
                    shown(ct, 64)
                ));
            }
        }
        let fields = match self.checked(payload).and_then(|p| self.fields(p, "")) {
            Ok(f) => f,
            Err(verdict) => return verdict,
        };
        if !fields.is_object() {
            return invalid_cloudevent("the data (the payload) is not a JSON object");
        }
        self.decide_ids(&fields, &self.given(headers, false), Some(cloud_event))
    }

    /// The required attributes (specversion, type, id, source, in that
    /// order; bits of `repeated` in the same order), checked in order with
    /// the type filter after the type: the CloudEvent's identity, or the
    /// verdict (`Skip` for another type).
    fn identify(
        &self,
        attributes: [Attribute<'_>; 4],
        repeated: u8,
        binary: bool,
    ) -> Result<Arc<CloudEventRef>, Decoded> {
        const NAMES: [&str; 4] = ["specversion", "type", "id", "source"];
        let name = |i: usize| {
            if binary {
                format!("header `ce_{}`", NAMES[i])
            } else {
                format!("attribute `{}`", NAMES[i])
            }
        };
        let [specversion, ty, id, source] = attributes;
        let required = |i: usize, value: Attribute<'_>| -> Result<String, Decoded> {
            if repeated & (1 << i) != 0 {
                return Err(reject(
                    DeadLetterReason::DuplicateKey,
                    format!("{} appears twice", name(i)),
                ));
            }
            match value {
                None => Err(invalid_cloudevent(format!("{} is missing", name(i)))),
                Some(Err(what)) => Err(invalid_cloudevent(format!(
                    "{} is {what}, not a string",
                    name(i)
                ))),
                Some(Ok(s)) if s.is_empty() => {
                    Err(invalid_cloudevent(format!("{} is empty", name(i))))
                }
                Some(Ok(s)) => Ok(s.into_owned()),
            }
        };
        let version = required(0, specversion)?;
        if version != "1.0" {
            return Err(invalid_cloudevent(format!(
                "{} is `{}`: only 1.0 is supported",
                name(0),
                shown(&version, 16)
            )));
        }
        let ty = required(1, ty)?;
        if !self.accepts_type(&ty) {
            return Err(Decoded::Skip);
        }
        let id = required(2, id)?;
        let source = required(3, source)?;
        for (i, value) in [(2, &id), (3, &source)] {
            if value.len() > MAX_ATTRIBUTE_BYTES {
                return Err(invalid_cloudevent(format!(
                    "{} is {} bytes, above {MAX_ATTRIBUTE_BYTES}",
                    name(i),
                    value.len()
                )));
            }
        }
        Ok(Arc::new(CloudEventRef { source, id }))
    }

    /// Structured mode: the payload is a JSON envelope with the attributes
    /// and `data` (or `data_base64`), read in one pass.
    fn structured(
        &self,
        payload: Option<&[u8]>,
        content_type: &str,
        headers: &HeaderValues<'_>,
    ) -> Decoded {
        let media = media_type(content_type);
        if !media.eq_ignore_ascii_case("application/cloudevents+json") {
            return invalid_cloudevent(
                if starts_with_ignore_case(media, "application/cloudevents-batch") {
                    "batched CloudEvents (application/cloudevents-batch+json) are not supported"
                        .to_string()
                } else {
                    format!(
                        "event format `{}` is not supported, only application/cloudevents+json",
                        shown(media, 64)
                    )
                },
            );
        }
        let payload = match self.checked(payload) {
            Ok(checked) => checked.text,
            Err(verdict) => return verdict,
        };
        match &self.flat {
            Some(keys) => match self.envelope(payload, FlatEvent(keys)) {
                Ok(envelope) => self.open(envelope.map_data(Fields::Flat), headers),
                Err(verdict) => verdict,
            },
            None => {
                let repeated = Cell::new(0);
                let envelope = self.envelope(payload, PathTracker::root(&self.paths, &repeated));
                match envelope {
                    Ok(envelope) => {
                        let repeated = repeated.get();
                        self.open(
                            envelope.map_data(|value| Fields::Tree { value, repeated }),
                            headers,
                        )
                    }
                    Err(verdict) => verdict,
                }
            }
        }
    }

    fn envelope<'p, S>(&self, payload: &'p str, data: S) -> Result<Envelope<'p, S::Value>, Decoded>
    where
        S: DeserializeSeed<'p> + Copy,
    {
        let mut de = serde_json::Deserializer::from_str(payload);
        EnvelopeSeed {
            data,
            attributes: &self.attributes,
        }
        .deserialize(&mut de)
        .and_then(|e| de.end().map(|()| e))
        .map_err(|e| not_json(e, ""))
    }

    /// The verdict on a structured-mode envelope.
    fn open<'a>(
        &self,
        mut envelope: Envelope<'a, Fields<'a>>,
        headers: &HeaderValues<'a>,
    ) -> Decoded {
        if !envelope.object {
            return invalid_cloudevent("the payload is not a JSON object (a CloudEvents envelope)");
        }
        let [specversion, ty, id, source, content_type, data_base64] =
            std::mem::take(&mut envelope.attributes).map(|value| match value {
                None | Some(Field::Null) => None,
                Some(Field::Str(s)) => Some(Ok(s)),
                Some(other) => Some(Err(other.type_name())),
            });
        let cloud_event = match self.identify(
            [specversion, ty, id, source],
            envelope.repeated & 0b1111,
            false,
        ) {
            Ok(ce) => ce,
            Err(verdict) => return verdict,
        };
        for (i, name) in [(4, "datacontenttype"), (5, "data_base64"), (6, "data")] {
            if envelope.repeated & (1 << i) != 0 {
                return reject(
                    DeadLetterReason::DuplicateKey,
                    format!("attribute `{name}` appears twice"),
                );
            }
        }
        match content_type {
            None => {}
            Some(Ok(ct)) if is_json_media_type(&ct) => {}
            Some(Ok(ct)) => {
                return invalid_cloudevent(format!(
                    "the data is `{}` (attribute `datacontenttype`), not JSON",
                    shown(&ct, 64)
                ))
            }
            Some(Err(what)) => {
                return invalid_cloudevent(format!(
                    "attribute `datacontenttype` is {what}, not a string"
                ))
            }
        }
        let mut given = self.given(headers, true);
        for which in Which::ALL {
            let i = which as usize;
            if self.attributes[i].is_some() {
                given.values[i] = match envelope.fields[i].take() {
                    None | Some(Field::Null) => None,
                    Some(Field::Str(s)) if s.is_empty() => None,
                    value => value,
                };
                if envelope.fields_repeated & which.bit() != 0 {
                    given.repeated |= which.bit();
                }
            }
        }
        match (envelope.data, data_base64) {
            (Some(_), Some(_)) => invalid_cloudevent("both data and data_base64"),
            (None, None) => invalid_cloudevent("no data (neither data nor data_base64)"),
            (Some(fields), None) => {
                if !fields.is_object() {
                    return invalid_cloudevent("data is not a JSON object");
                }
                self.decide_ids(&fields, &given, Some(cloud_event))
            }
            (None, Some(Err(what))) => {
                invalid_cloudevent(format!("data_base64 is {what}, not a string"))
            }
            (None, Some(Ok(text))) => {
                let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.as_bytes())
                else {
                    return invalid_cloudevent("data_base64 is not valid base64");
                };
                if bytes.is_empty() {
                    return invalid_cloudevent("data_base64 is empty");
                }
                let within = "in data_base64: ";
                let fields =
                    match readable(&bytes, within).and_then(|json| self.fields(json, within)) {
                        Ok(f) => f,
                        Err(verdict) => return verdict,
                    };
                if !fields.is_object() {
                    return invalid_cloudevent("data_base64 does not hold a JSON object");
                }
                self.decide_ids(&fields, &given, Some(cloud_event))
            }
        }
    }
}

/// A media type without its parameters (`application/json; charset=utf-8`).
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// `application/json`, `text/json` or any `…+json` (CloudEvents' rule for
/// JSON data), parameters and case aside.
fn is_json_media_type(content_type: &str) -> bool {
    let media = media_type(content_type);
    let bytes = media.as_bytes();
    media.eq_ignore_ascii_case("application/json")
        || media.eq_ignore_ascii_case("text/json")
        || (bytes.len() > 5 && bytes[bytes.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A value from the message for a detail: at most `max` characters, escaped.
fn shown(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

#[cfg(test)]
mod tests;
