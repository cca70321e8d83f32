//! The checks both decoding paths share once the fields are found: the event
//! type, duplicate keys, ids (count, length, emptiness) and the region; and
//! the nesting limit checked before either path runs.

use std::sync::Arc;

use crate::domain::ids::{IdKind, RegionName};
use crate::input::decode::field::{Field, Item, Which};
use crate::input::decode::{DeadLetterReason, Decoded, DeletionRequest, EventDecoder, Rejection};

pub(super) fn reject(reason: DeadLetterReason, detail: impl Into<String>) -> Decoded {
    Decoded::DeadLetter(Rejection {
        reason,
        detail: detail.into(),
    })
}

impl EventDecoder {
    /// The verdict, given the fields whose key (or a key on the way to it)
    /// appears twice in one object (bits of [`Which::bit`]) and a way to look
    /// up each configured field.
    pub(super) fn decide<'a>(
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

    pub(super) fn pointer(&self, which: Which) -> &str {
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
pub(super) const MAX_NESTING: usize = 127;

/// Whether arrays and objects nest deeper than `limit`, ignoring brackets
/// inside strings. One pass over the bytes, no allocation.
pub(super) fn nested_deeper_than(payload: &[u8], limit: usize) -> bool {
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
