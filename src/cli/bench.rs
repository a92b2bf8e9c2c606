//! `dycoke bench`: speed against a baseline in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use dycoke::bench::{describe_row, run_llm_bench, table_header, LlmBenchOptions};
use dycoke::Error;

use super::common::DEFAULT_MODEL;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Text generation: dycoke against llama.cpp's libllama on the same GGUF and threads.
    Llm(LlmArgs),
}

#[derive(Args)]
pub struct LlmArgs {
    /// LLM GGUF file.
    #[arg(short = 'm', long = "model", value_name = "GGUF", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// CPU threads for both engines [default: all cores].
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Tokens generated per decode test.
    #[arg(long, default_value_t = 32)]
    gen: usize,
    /// Cache depths of the decode tests, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,2048,8192")]
    depths: Vec<usize>,
    /// Repetitions per test (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Print one JSON object per test instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: BenchCommand) -> dycoke::Result<()> {
    match cmd {
        BenchCommand::Llm(a) => {
            if !a.model.exists() {
                return Err(Error::invalid("model", format!("{} does not exist", a.model.display())));
            }
            let opts = LlmBenchOptions {
                model: a.model.clone(),
                threads: a.threads.unwrap_or_else(dycoke::session::default_threads),
                prompt_tokens: a.prompt,
                gen_tokens: a.gen,
                depths: a.depths.clone(),
                reps: a.reps,
            };
            eprintln!("{} on {} threads, CPU: {}", a.model.display(), opts.threads, dycoke::ggml::cpu_features_line());
            if !a.json {
                println!("{}", table_header());
            }
            // Rows print as they are measured (the whole run takes minutes).
            run_llm_bench(&opts, &mut |r| {
                if a.json {
                    println!("{}", serde_json::to_string(r).expect("serializable"));
                } else {
                    println!("{}", describe_row(r));
                }
            })?;
            Ok(())
        }
    }
}
