//! Kafka in: the consumer thread (`source`), the event decoder, record
//! headers read as bytes (`headers`), lag and retention checks, and the read-back of the recent past
//! that warms the dedup memory at start (`warm`).

pub mod decode;
pub mod headers;
pub mod lag;
pub mod partition_count;
pub mod retention;
pub mod source;
pub mod warm;
