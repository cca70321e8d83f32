//! The application: command line, the pipeline that wires the stages, demo, dead-letter replay, online checks, exit codes.

pub mod cli;
pub mod demo;
pub mod exit_code;
pub mod online;
pub mod pipeline;
pub mod replay;
