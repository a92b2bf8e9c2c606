//! Command-line definitions (clap) and dispatch.

mod batch;
mod bench;
mod benches;
mod chat;
mod common;
mod compress;
mod hub;
mod info;
mod media;
mod rpc_server;
mod run;
mod serve;

use std::ffi::OsString;

use clap::{Parser, Subcommand};
use dycoke::{Error, Setting};


#[derive(Parser)]
#[command(
    name = "dycoke",
    version,
    about = "Ask questions about videos, locally: LLaVA-OneVision on ggml with DyCoke token compression",
    long_about = "Ask questions about videos, locally: LLaVA-OneVision on ggml with DyCoke token compression.\n\n\
        Model files are GGUF (see models.md). Generated text goes to stdout; progress and diagnostics to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one prompt and exit (the generated text streams to stdout).
    Run(run::RunArgs),
    /// Chat interactively in the terminal.
    Chat(chat::ChatArgs),
    /// Answer a JSONL file of requests (resumable, shardable, with multiple-choice scoring).
    Batch(batch::BatchArgs),
    /// Serve the model over HTTP: an OpenAI-compatible API (chat completions with video) and a chat page.
    Serve(serve::ServeArgs),
    /// Serve this machine's device to `--rpc` clients over ggml's RPC protocol (NO AUTHENTICATION:
    /// loopback by default; see SECURITY.md).
    RpcServer(rpc_server::RpcServerArgs),
    /// Print a GGUF file's metadata and tensors.
    Info(info::InfoArgs),
    /// Download a model from the Hugging Face Hub (and convert it) ahead of use, or list the cache.
    Pull(hub::pull::PullArgs),
    /// Measure speed against a baseline in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// llama.cpp spells some options with one dash and several letters (`-ngl 99`, `-np 4`); clap
/// wants two.
pub fn normalize_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|a| match a.to_str() {
        Some("-ngl") => OsString::from("--ngl"),
        Some("-np") => OsString::from("--np"),
        Some("-hf") => OsString::from("--hf"),
        Some("-ts") => OsString::from("--tensor-split"),
        _ => a,
    })
    .collect()
}

/// The command-line flag of a setting: library errors name settings, the command line names flags.
pub fn flag(s: Setting) -> &'static str {
    match s {
        Setting::ContextSize => "-c/--ctx-size",
        Setting::BatchSize => "-b/--batch-size",
        Setting::Threads => "-t/--threads",
        Setting::VisionBatch => "--batch",
        Setting::VisionReuseLayer | Setting::VisionReuseThreshold => "--vision-reuse",
        Setting::Frames => "--frames",
        Setting::Fps => "--fps",
        Setting::MaxFrames => "--max-frames",
        Setting::TtmK => "--ttm-k",
        Setting::DpLayer => "--dp-layer",
        Setting::DpRatio => "--dp-ratio",
        Setting::DpThreshold => "the pruning reuse threshold",
        Setting::Temperature => "--temp",
        Setting::TopK => "--top-k",
        Setting::TopP => "--top-p",
        Setting::MinP => "--min-p",
        Setting::RepeatPenalty => "--repeat-penalty",
        Setting::RepeatLastN => "--repeat-last-n",
        Setting::MaxTokens => "-n/--n-predict",
        Setting::Device => "--device",
        Setting::GpuLayers => "-ngl/--n-gpu-layers",
        Setting::TensorSplit => "-ts/--tensor-split",
        Setting::CacheDir => "--cache-dir",
        Setting::VisionType => "--vision-type",
    }
}

/// An error as the command line tells it: settings by their flags, with the flag that fixes a
/// problem where there is one.
pub fn describe_error(e: &Error) -> String {
    match e {
        Error::Setting { setting, problem } => format!("{}: {setting} {problem}", flag(*setting)),
        Error::NoVisionModel => "videos and images need a vision model: pass --mmproj FILE.gguf".into(),
        Error::ContextOverflow { .. } => format!("{e}; raise -c/--ctx-size"),
        Error::InvalidArgument { what, problem } if what == hub::ERROR_WHAT => problem.clone(),
        _ => e.to_string(),
    }
}

pub fn run(cli: Cli) -> dycoke::Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Serve(a) => serve::run(a),
        Command::RpcServer(a) => rpc_server::run(a),
        Command::Info(a) => info::run(a),
        Command::Pull(a) => hub::pull::run(a),
        Command::Bench(b) => bench::run(b),
    }
}
