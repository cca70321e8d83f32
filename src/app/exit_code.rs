//! The process exit codes every subcommand shares (`run`, `check-config`,
//! `replay-dlq`, `status`), in a leaf so that `cli` and `replay` both take
//! them from here.

/// A fatal error while running (Kafka, the pipeline, a failed replay).
pub const EXIT_FATAL: u8 = 1;
/// The configuration or the command line is invalid.
pub const EXIT_CONFIG: u8 = 2;
