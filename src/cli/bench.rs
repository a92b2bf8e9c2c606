//! `dycoke bench`: speed against a baseline in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use dycoke::bench::{describe_row, run_llm_bench, run_vision_bench, table_header, LlmBenchOptions, VisionBenchOptions};
use dycoke::Error;

use super::common::DEFAULT_MODEL;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Text generation: dycoke against llama.cpp's libllama on the same GGUF and threads.
    Llm(LlmArgs),
    /// The vision encoder: seconds per frame, against the machine's matrix-product throughput for
    /// the same shapes.
    Vision(VisionArgs),
}

#[derive(Args)]
pub struct VisionArgs {
    /// Vision model GGUF (for real dimensions: gguf-tools random --mmproj -o siglip.gguf --type f16).
    #[arg(long, value_name = "GGUF")]
    mmproj: PathBuf,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Frames encoded per repetition.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    /// Frames per graph.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// Also time llama.cpp's CLIP on the same file, with this text model (its width must match the
    /// projector's). Needs a build with --features llama-mtmd.
    #[arg(long, value_name = "GGUF")]
    llama_cpp_llm: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
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
        BenchCommand::Vision(a) => {
            let opts = VisionBenchOptions {
                mmproj: a.mmproj.clone(),
                threads: a.threads.unwrap_or_else(dycoke::session::default_threads),
                frames: a.frames,
                batch: a.batch,
                reps: a.reps,
                llama_cpp_llm: a.llama_cpp_llm.clone(),
            };
            eprintln!("{} on {} threads, CPU: {}", a.mmproj.display(), opts.threads, dycoke::ggml::cpu_features_line());
            let r = run_vision_bench(&opts)?;
            if a.json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!("weights                {}", r.weight_type);
                println!("frames x batch         {} x {}", r.frames, r.batch);
                println!("seconds per frame      {:.3}", r.seconds_per_frame);
                println!("GFLOP per frame        {:.1}", r.gflop_per_frame);
                println!("achieved GFLOP/s       {:.1}", r.achieved_gflops);
                println!("matmul GFLOP/s         {:.1}   (the tower's six matrix products alone, same shapes and types)", r.matmul_gflops);
                println!("achieved / attainable  {:.3}", r.efficiency);
                if let Some(l) = r.llama_cpp_seconds_per_frame {
                    println!("llama.cpp CLIP s/frame {:.3}   (dycoke is {:.2}x its speed)", l, l / r.seconds_per_frame);
                }
            }
            Ok(())
        }
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
