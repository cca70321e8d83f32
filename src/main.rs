use std::process::ExitCode;

use clap::Parser;
use clevertap_deleter::cli::{main_with, Cli};

fn main() -> ExitCode {
    main_with(Cli::parse())
}
