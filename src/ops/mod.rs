//! Operations: metrics, health and readiness, the HTTP server, the status view, logging.

pub mod health;
pub mod log_throttle;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod status;
