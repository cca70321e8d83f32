//! Kafka in: the consumer thread (`source`), the event decoder, lag and retention checks.

pub mod decode;
pub mod lag;
pub mod partition_count;
pub mod retention;
pub mod source;
