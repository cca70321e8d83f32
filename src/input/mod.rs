//! Kafka in: the consumer thread (`source`), the event decoder, record
//! headers read as bytes (`headers`), lag and retention checks.

pub mod decode;
pub mod headers;
pub mod lag;
pub mod partition_count;
pub mod retention;
pub mod source;
