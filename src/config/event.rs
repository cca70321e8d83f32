//! `[event]`: where the ids, type and region are in a deletion event, and its
//! size limits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// JSON pointer to the event type; empty accepts every message.
    pub type_pointer: String,
    pub accept_types: Vec<String>,
    pub identity_pointer: String,
    pub guid_pointer: String,
    pub region_pointer: String,
    pub default_region: Option<String>,
    pub max_message_bytes: usize,
    pub max_id_bytes: usize,
    pub max_ids_per_event: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            type_pointer: "/type".into(),
            accept_types: vec!["user-deleted".into()],
            identity_pointer: "/identity".into(),
            guid_pointer: "/guid".into(),
            region_pointer: "/region".into(),
            default_region: None,
            max_message_bytes: 65_536,
            max_id_bytes: 256,
            max_ids_per_event: 1_000,
        }
    }
}
