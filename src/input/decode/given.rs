//! The fields Kafka headers give: which headers the decoder reads (the
//! CloudEvents binding's, and `event.*_header`), their values as found in
//! one message, and the fields they give beside the JSON's.

use std::borrow::Cow;

use crate::input::decode::field::{Field, Which};
use crate::input::decode::EventDecoder;

/// The headers the decoder may read, by slot: the CloudEvents binding's
/// (`event.format = "cloudevents"`), then one per field (`event.*_header`,
/// in [`Which`] order).
pub(super) mod slot {
    pub const CONTENT_TYPE: usize = 0;
    pub const SPECVERSION: usize = 1;
    pub const TYPE: usize = 2;
    pub const ID: usize = 3;
    pub const SOURCE: usize = 4;
    pub const FIELDS: usize = 5;
    pub const COUNT: usize = 9;
}

/// The CloudEvents Kafka binding's headers, in slot order.
pub(super) const CLOUDEVENT_HEADERS: [&str; 5] = [
    "content-type",
    "ce_specversion",
    "ce_type",
    "ce_id",
    "ce_source",
];

/// The values of the headers the decoder reads (a null or empty value counts
/// as absent), and which of them appeared more than once (bits by slot).
pub(super) struct HeaderValues<'h> {
    values: [Option<&'h [u8]>; slot::COUNT],
    repeated: u16,
}

impl<'h> HeaderValues<'h> {
    pub(super) fn none() -> Self {
        HeaderValues {
            values: [None; slot::COUNT],
            repeated: 0,
        }
    }

    pub(super) fn get(&self, slot: usize) -> Option<&'h [u8]> {
        self.values[slot]
    }

    pub(super) fn repeated(&self, slot: usize) -> bool {
        self.repeated & (1 << slot) != 0
    }
}

/// The fields given outside the JSON the pointers read: by Kafka headers,
/// or in structured mode by CloudEvents attributes (`ce_<attr>` names).
#[derive(Default)]
pub(super) struct Given<'a> {
    /// By [`Which`]; a null or empty value counts as absent.
    pub(super) values: [Option<Field<'a>>; 4],
    /// Bits of [`Which::bit`]: the header or attribute appeared twice.
    pub(super) repeated: u8,
}

impl EventDecoder {
    /// The values of the headers the decoder reads, as (key, value) pairs in order.
    pub(super) fn read_headers<'h>(
        &self,
        headers: impl IntoIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    ) -> HeaderValues<'h> {
        let mut found = HeaderValues::none();
        for (key, value) in headers {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            for (slot, name) in self.headers.iter().enumerate() {
                if name.as_deref().map(str::as_bytes) == Some(key) {
                    if found.values[slot].is_some() {
                        found.repeated |= 1 << slot;
                    }
                    found.values[slot] = Some(value);
                }
            }
        }
        found
    }

    /// The fields given by headers; with `skip_attributes` (structured
    /// mode) not those named `ce_<attr>`, which the envelope gives.
    pub(super) fn given<'h>(&self, headers: &HeaderValues<'h>, skip_attributes: bool) -> Given<'h> {
        let mut given = Given::default();
        for which in Which::ALL {
            let i = which as usize;
            if skip_attributes && self.attributes[i].is_some() {
                continue;
            }
            if headers.repeated(slot::FIELDS + i) {
                given.repeated |= which.bit();
            }
            given.values[i] = headers
                .get(slot::FIELDS + i)
                .map(|v| match std::str::from_utf8(v) {
                    Ok(s) => Field::Str(Cow::Borrowed(s)),
                    Err(_) => Field::Other("invalid UTF-8"),
                });
        }
        given
    }
}

#[cfg(test)]
mod tests;
