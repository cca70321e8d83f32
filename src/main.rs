use std::process::ExitCode;

use clap::Parser;
use clevertap_deleter::app::cli::{main_with, Cli};

// Records are allocated on the consumer thread and freed on the coordinator
// thread; glibc's malloc pays for that cross-thread traffic (measured in
// benches/core.rs and the throughput benchmark, see docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    main_with(Cli::parse())
}
