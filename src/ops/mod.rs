//! Operations: metrics, health and readiness, the HTTP server, the status view, logging, secret files re-read while running.

pub mod health;
pub mod log_throttle;
pub mod logging;
pub mod metrics;
pub mod secret_reload;
pub mod server;
pub mod status;
