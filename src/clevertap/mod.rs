//! CleverTap out: the Delete User Profile API client, the dispatcher that sends batches per account, the AIMD concurrency limiter.

pub mod api;
pub mod dispatch;
pub mod limiter;
