//! `[event]`: how a message carries a deletion event (plain JSON or a
//! CloudEvent), where the ids, type and region are in it, and its size limits.

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// How a message carries the event: plain JSON, or a CloudEvent.
    pub format: EventFormat,
    /// JSON pointer to the event type; empty accepts every message.
    pub type_pointer: String,
    pub accept_types: Vec<String>,
    pub identity_pointer: String,
    pub guid_pointer: String,
    pub region_pointer: String,
    /// Kafka headers read as the type, ids and region, besides (or instead
    /// of) the pointers. With `format = "cloudevents"`, a name `ce_<attr>`
    /// reads the CloudEvents attribute `<attr>` in both modes.
    pub type_header: Option<String>,
    pub identity_header: Option<String>,
    pub guid_header: Option<String>,
    pub region_header: Option<String>,
    pub default_region: Option<String>,
    pub max_message_bytes: usize,
    pub max_id_bytes: usize,
    pub max_ids_per_event: usize,
}

/// `event.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// The payload is the event, a JSON object.
    #[default]
    Json,
    /// CloudEvents 1.0 in the Kafka protocol binding: structured mode (the
    /// payload is a JSON envelope) or binary mode (attributes in `ce_*`
    /// headers, the payload is the data).
    CloudEvents,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            format: EventFormat::Json,
            type_pointer: "/type".into(),
            accept_types: vec!["user-deleted".into()],
            identity_pointer: "/identity".into(),
            guid_pointer: "/guid".into(),
            region_pointer: "/region".into(),
            type_header: None,
            identity_header: None,
            guid_header: None,
            region_header: None,
            default_region: None,
            max_message_bytes: 65_536,
            max_id_bytes: 256,
            max_ids_per_event: 1_000,
        }
    }
}

/// Header names that belong to the CloudEvents envelope: never a field's.
const ENVELOPE_HEADERS: [&str; 6] = [
    "content-type",
    "ce_specversion",
    "ce_type",
    "ce_datacontenttype",
    "ce_data",
    "ce_data_base64",
];

impl EventSettings {
    /// The header names, and that some id and (when a type is read) some
    /// accepted type can ever be found.
    pub(super) fn check_fields(&self) -> Result<(), ConfigError> {
        self.check_headers()?;
        if self.identity_pointer.is_empty()
            && self.guid_pointer.is_empty()
            && self.identity_header.is_none()
            && self.guid_header.is_none()
        {
            return Err(ConfigError::new(
                "event.identity_pointer",
                "identity_pointer and guid_pointer are both empty and no identity_header or \
                 guid_header is set: no id could ever be read",
            ));
        }
        let typed = self.format == EventFormat::CloudEvents
            || !self.type_pointer.is_empty()
            || self.type_header.is_some();
        if typed && self.accept_types.is_empty() {
            return Err(ConfigError::new(
                "event.accept_types",
                "is empty while the type is read (type_pointer, type_header or format = \
                 \"cloudevents\"): every message would be skipped",
            ));
        }
        Ok(())
    }

    /// The `event.*_header` names, and what `format = "cloudevents"` rules out.
    fn check_headers(&self) -> Result<(), ConfigError> {
        let named = [
            ("event.type_header", &self.type_header),
            ("event.identity_header", &self.identity_header),
            ("event.guid_header", &self.guid_header),
            ("event.region_header", &self.region_header),
        ];
        for (i, (key, name)) in named.iter().enumerate() {
            let Some(name) = name else { continue };
            if name.is_empty() || name.trim() != name {
                return Err(ConfigError::new(
                    *key,
                    format!(
                        "`{name}` is not a header name (empty, or spaces around it); \
                         leave the key out to read no header"
                    ),
                ));
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, n)| n.as_ref() == Some(name)) {
                return Err(ConfigError::new(
                    *key,
                    format!("`{name}` is also {other}: one header cannot be two fields"),
                ));
            }
        }
        if self.format != EventFormat::CloudEvents {
            return Ok(());
        }
        if self.type_header.is_some() {
            return Err(ConfigError::new(
                "event.type_header",
                "does not apply with format = \"cloudevents\": the type is the CloudEvents \
                 `type` attribute (ce_type); remove type_header",
            ));
        }
        if self.type_pointer != EventSettings::default().type_pointer {
            return Err(ConfigError::new(
                "event.type_pointer",
                "does not apply with format = \"cloudevents\": the type is the CloudEvents \
                 `type` attribute, and the other pointers are read inside `data`; remove \
                 type_pointer",
            ));
        }
        for (key, name) in named {
            if let Some(name) = name.as_deref().filter(|n| ENVELOPE_HEADERS.contains(n)) {
                return Err(ConfigError::new(
                    key,
                    format!("`{name}` is part of the CloudEvents envelope, not a field"),
                ));
            }
        }
        Ok(())
    }
}
