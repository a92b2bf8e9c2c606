//! The dycoke command line. It parses arguments and calls the library; nothing else.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    dycoke::ggml::init();
    let cli = cli::Cli::parse_from(cli::normalize_args(std::env::args_os()));
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dycoke: error: {}", cli::describe_error(&e));
            ExitCode::FAILURE
        }
    }
}
