//! clevertap-deleter: reads "user-deleted" events from Kafka and deletes the
//! users' CleverTap profiles, committing offsets only after CleverTap confirmed.
//!
//! Data flows one way: [`source`] (consume + [`decode`]) -> [`ledger`] (dedup,
//! [`batch`], [`offsets`]) -> [`dispatch`] ([`api`], [`limiter`], [`backoff`]) ->
//! acknowledgements -> commits. [`pipeline`] wires the stages together.

pub mod api;
pub mod audit;
pub mod backoff;
pub mod batch;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod dedup;
pub mod demo;
pub mod dispatch;
pub mod exit_code;
pub mod fake_api;
pub mod health;
pub mod ids;
pub mod lag;
pub mod ledger;
pub mod limiter;
pub mod log_throttle;
pub mod logging;
pub mod metrics;
pub mod offsets;
pub mod online;
pub mod outcome;
pub mod pipeline;
pub mod produce;
pub mod replay;
pub mod retention;
pub mod revokes;
pub mod secret;
pub mod server;
pub mod source;
pub mod status;
pub mod synth;
