//! The checks both decoding paths share once the fields are found: the event
//! type, duplicate keys, a header's value against its pointer's, ids (count,
//! length, emptiness) and the region; and the checks before either path
//! runs (UTF-8, the nesting limit).

use std::sync::Arc;

use crate::config::EventFormat;
use crate::domain::event::CloudEventRef;
use crate::domain::ids::{IdKind, RegionName};
use crate::input::decode::field::{Field, Item, Which};
use crate::input::decode::given::{slot, Given};
use crate::input::decode::{
    DeadLetterReason, Decoded, DeletionRequest, EventDecoder, Fields, Rejection,
};

pub(super) fn reject(reason: DeadLetterReason, detail: impl Into<String>) -> Decoded {
    Decoded::DeadLetter(Rejection {
        reason,
        detail: detail.into(),
    })
}

impl EventDecoder {
    pub(super) fn accepts_type(&self, ty: &str) -> bool {
        self.accept_types.iter().any(|t| **t == *ty)
    }

    /// The verdict on a plain JSON event: the type filter (if a type is
    /// read), then ids and region.
    pub(super) fn decide(&self, fields: &Fields<'_>, given: &Given<'_>) -> Decoded {
        let in_json = fields.repeated();
        let is_repeated = |which: Which| (in_json | given.repeated) & which.bit() != 0;
        if !self.settings.type_pointer.is_empty() || self.settings.type_header.is_some() {
            if is_repeated(Which::Type) {
                return self.repeated_key(Which::Type, in_json);
            }
            let ty = match self.merged(Which::Type, given, self.lookup(fields, Which::Type)) {
                Ok(ty) => ty,
                Err(rejection) => return Decoded::DeadLetter(rejection),
            };
            match ty {
                Some(Field::Str(t)) => {
                    if !self.accepts_type(&t) {
                        return Decoded::Skip;
                    }
                }
                // No usable type: a deletion with a broken type must not be
                // skipped, but a message with no id at all is no deletion.
                untyped => {
                    let carries_ids = [Which::Identity, Which::Guid].into_iter().any(|which| {
                        is_repeated(which)
                            || given.values[which as usize].is_some()
                            || match self.lookup(fields, which) {
                                None | Some(Field::Null) => false,
                                Some(Field::Array(items)) => !items.is_empty(),
                                Some(_) => true,
                            }
                    });
                    if !carries_ids {
                        return Decoded::Skip;
                    }
                    let place = self.place(Which::Type);
                    return reject(
                        DeadLetterReason::MissingType,
                        match untyped {
                            None => format!("no type at {place}, but the event carries ids"),
                            Some(t) => {
                                format!("type at {place} is {}, not a string", t.type_name())
                            }
                        },
                    );
                }
            }
        }
        self.decide_ids(fields, given, None)
    }

    /// The verdict once the type is accepted: repeated keys, ids, region.
    pub(super) fn decide_ids(
        &self,
        fields: &Fields<'_>,
        given: &Given<'_>,
        cloud_event: Option<Arc<CloudEventRef>>,
    ) -> Decoded {
        let in_json = fields.repeated();
        for which in [Which::Identity, Which::Guid, Which::Region] {
            if (in_json | given.repeated) & which.bit() != 0 {
                return self.repeated_key(which, in_json);
            }
        }

        let mut ids: Vec<(IdKind, Arc<str>)> = Vec::new();
        for (kind, which) in [
            (IdKind::Identity, Which::Identity),
            (IdKind::Guid, Which::Guid),
        ] {
            let found = self
                .merged(which, given, self.lookup(fields, which))
                .and_then(|field| self.collect_ids(field, kind, &mut ids));
            if let Err(rejection) = found {
                return Decoded::DeadLetter(rejection);
            }
        }
        if ids.is_empty() {
            let places: Vec<String> = [Which::Identity, Which::Guid]
                .into_iter()
                .map(|which| self.place(which))
                .filter(|p| !p.is_empty())
                .collect();
            return reject(
                DeadLetterReason::NoId,
                format!("no id at {}", places.join(" or ")),
            );
        }

        let region = match self
            .merged(Which::Region, given, self.lookup(fields, Which::Region))
            .and_then(|field| self.region_of(field))
        {
            Ok(r) => r,
            Err(rejection) => return Decoded::DeadLetter(rejection),
        };
        Decoded::Delete(DeletionRequest {
            region,
            ids,
            cloud_event,
        })
    }

    /// One value for a field that a header (or attribute) gives, its pointer
    /// finds, or both: `duplicate_key` when both are there and differ.
    fn merged<'a>(
        &self,
        which: Which,
        given: &Given<'a>,
        found: Option<Field<'a>>,
    ) -> Result<Option<Field<'a>>, Rejection> {
        let Some(by_header) = &given.values[which as usize] else {
            return Ok(found);
        };
        match found {
            None | Some(Field::Null) => Ok(Some(by_header.clone())),
            Some(at_pointer) if same_value(which, by_header, &at_pointer) => {
                Ok(Some(by_header.clone()))
            }
            Some(_) => Err(Rejection {
                reason: DeadLetterReason::DuplicateKey,
                detail: format!(
                    "the {} is given twice, differently: by {} and at {}",
                    which.name(),
                    self.header_place(which),
                    self.pointer_place(which)
                ),
            }),
        }
    }

    pub(super) fn pointer(&self, which: Which) -> &str {
        match which {
            Which::Type => &self.settings.type_pointer,
            Which::Identity => &self.settings.identity_pointer,
            Which::Guid => &self.settings.guid_pointer,
            Which::Region => &self.settings.region_pointer,
        }
    }

    /// "`/region`", or with CloudEvents "`/region` in data"; "" when unset.
    fn pointer_place(&self, which: Which) -> String {
        match self.pointer(which) {
            "" => String::new(),
            p if self.settings.format == EventFormat::CloudEvents => format!("`{p}` in data"),
            p => format!("`{p}`"),
        }
    }

    /// "header `tenant-region`", "attribute `region` (header `ce_region`)"; "" when unset.
    fn header_place(&self, which: Which) -> String {
        let i = which as usize;
        match (&self.headers[slot::FIELDS + i], &self.attributes[i]) {
            (Some(h), Some(a)) => format!("attribute `{a}` (header `{h}`)"),
            (Some(h), None) => format!("header `{h}`"),
            (None, _) => String::new(),
        }
    }

    /// Where a field is read, for details.
    fn place(&self, which: Which) -> String {
        let places = [self.header_place(which), self.pointer_place(which)];
        let set: Vec<&str> = places
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        set.join(" or ")
    }

    fn repeated_key(&self, which: Which, in_json: u8) -> Decoded {
        let detail = if in_json & which.bit() != 0 {
            format!(
                "`{}` is ambiguous: its key, or one on the way to it, appears twice in one object",
                self.pointer(which)
            )
        } else {
            format!("{} appears twice", self.header_place(which))
        };
        reject(DeadLetterReason::DuplicateKey, detail)
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
                .iter()
                .find(|r| r.as_str().eq_ignore_ascii_case(name.trim()))
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
                detail: match self.place(Which::Region) {
                    place if place.is_empty() => "no region and no event.default_region".into(),
                    place => format!("no region at {place} and no event.default_region"),
                },
            }),
        }
    }
}

/// JSON that passed the checks before parsing: UTF-8, not nested too deep.
/// Carries what the checks learned, so parsing does not redo them.
#[derive(Clone, Copy)]
pub(super) struct Checked<'p> {
    pub(super) text: &'p str,
    /// Opening brackets, those in strings too (a bound on the nesting).
    pub(super) brackets: usize,
}

/// UTF-8 and not nested too deep; `within` starts the details.
pub(super) fn readable<'p>(json: &'p [u8], within: &str) -> Result<Checked<'p>, Decoded> {
    // simdutf8 (what sonic-rs validates with) is several times std's speed;
    // its `compat` flavour, run only on failure, says where.
    let text = match simdutf8::basic::from_utf8(json) {
        Ok(text) => text,
        Err(_) => {
            let at = simdutf8::compat::from_utf8(json).map_or_else(|e| e.valid_up_to(), str::len);
            return Err(reject(
                DeadLetterReason::NotUtf8,
                format!("{within}invalid UTF-8 at byte {at}"),
            ));
        }
    };
    let brackets = brackets_opened(json);
    if brackets > MAX_NESTING && walks_deeper_than(json, MAX_NESTING) {
        return Err(reject(
            DeadLetterReason::NotJson,
            format!("{within}nesting deeper than {MAX_NESTING} levels"),
        ));
    }
    Ok(Checked { text, brackets })
}

pub(super) fn not_json(e: serde_json::Error, within: &str) -> Decoded {
    not_json_at(e.line(), e.column(), e.classify(), within)
}

/// A `not_json` verdict where either parser stopped, and why.
pub(super) fn not_json_at(
    line: usize,
    column: usize,
    category: impl std::fmt::Debug,
    within: &str,
) -> Decoded {
    reject(
        DeadLetterReason::NotJson,
        format!("{within}line {line} column {column}: {category:?}"),
    )
}

/// Whether a header (or pointer) value and the value at the pointer (or
/// header) are the same: equal strings (a region ignoring case and spaces
/// around it, as regions are matched), or for ids an array of that one string.
fn same_value(which: Which, given: &Field<'_>, found: &Field<'_>) -> bool {
    let Field::Str(given) = given else {
        return false;
    };
    match (which, found) {
        (Which::Region, Field::Str(f)) => given.trim().eq_ignore_ascii_case(f.trim()),
        (_, Field::Str(f)) => given == f,
        (Which::Identity | Which::Guid, Field::Array(items)) => {
            !items.is_empty()
                && items
                    .iter()
                    .all(|item| matches!(item, Item::Str(s) if s == given))
        }
        _ => false,
    }
}

/// Deepest JSON nesting accepted, in levels of arrays and objects. serde_json
/// refuses a document nested 128 deep (its recursion limit) and accepts 127.
/// The fast path skips unread values without counting levels, so both paths
/// check this first and refuse exactly what serde_json refuses.
pub(super) const MAX_NESTING: usize = 127;

/// Opening brackets in `payload`, those in strings too: a bound on its
/// nesting, found with memchr's SIMD search (events hold a few).
pub(super) fn brackets_opened(payload: &[u8]) -> usize {
    memchr::memchr2_iter(b'[', b'{', payload).count()
}

/// Whether arrays and objects nest deeper than `limit`, ignoring brackets
/// inside strings. No allocation.
#[cfg(test)]
pub(super) fn nested_deeper_than(payload: &[u8], limit: usize) -> bool {
    // Depth never exceeds the brackets opened (those inside strings count
    // too, so this overestimates): the count settles almost every event
    // without following strings byte by byte.
    brackets_opened(payload) > limit && walks_deeper_than(payload, limit)
}

/// [`nested_deeper_than`] by one pass over the bytes, following strings.
fn walks_deeper_than(payload: &[u8], limit: usize) -> bool {
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
