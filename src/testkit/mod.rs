//! Test doubles compiled into the library because the demo uses them: the fake CleverTap API and synthetic events.

pub mod fake_api;
pub mod synth;
