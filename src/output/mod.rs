//! Kafka out: the producer shared by the dead-letter and audit writers.

pub mod audit;
pub mod dead_letter;
pub mod produce;
