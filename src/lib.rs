//! clevertap-deleter: reads "user-deleted" events from Kafka and deletes the
//! users' CleverTap profiles, committing offsets only after CleverTap confirmed.
//!
//! Data flows one way, one folder per role:
//!
//! ```text
//!  input/            domain/ (pure, no I/O)          clevertap/
//!  source, decode -> ledger: dedup, batch, offsets -> dispatch, api, limiter
//!                      ^                                   |
//!                      '------ reports (outcome) ----------'
//!                      |
//!                      +-> commits (input/source)   output/: dead letters, audit
//!
//!  ops/: metrics, health, server, status, logging    (beside the flow)
//!  app/: cli, pipeline (wires the stages), demo, replay, online checks
//!  config: TOML + environment, validated; read by every folder, imports only domain
//!  testkit/: fake CleverTap API, synthetic events     (for the demo and tests)
//! ```
//!
//! Imports point down the flow or into `domain`; `domain::outcome` is a leaf
//! that both the deciding modules and `ops::metrics` use, so metrics never
//! reach into the domain and the domain never reaches up.

pub mod app;
pub mod clevertap;
pub mod config;
pub mod domain;
pub mod input;
pub mod ops;
pub mod output;
pub mod testkit;
