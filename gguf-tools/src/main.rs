//! The gguf-tools command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dycoke::ggml::GgmlType;
use dycoke::gguf::GgufFile;
use gguf_tools::random::{write_qwen2, Qwen2Spec};
use gguf_tools::vocab::Vocab;

#[derive(Parser)]
#[command(name = "gguf-tools", version, about = "Make, convert, quantize and inspect GGUF files for dycoke")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a GGUF file's metadata and tensors.
    Inspect {
        file: PathBuf,
        /// List every tensor (default: a summary by type).
        #[arg(long)]
        tensors: bool,
    },
    /// Write a random-weight model for tests and benchmarks: a Qwen2 LLM, or with --mmproj a
    /// SigLIP vision model (default: SigLIP-so400m's real dimensions, 26 blocks, projector to 896).
    Random {
        /// Write a vision model (mmproj) instead of a language model.
        #[arg(long)]
        mmproj: bool,
        /// mmproj: the language model's width the projector feeds.
        #[arg(long, default_value_t = 896)]
        out_dim: u32,
        /// mmproj: transformer blocks.
        #[arg(long, default_value_t = 26)]
        vision_blocks: u32,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Weight type of the matrices: f32, f16, bf16, q8_0, q4_0, q5_0, q4_k, q5_k, q6_k.
        #[arg(long = "type", default_value = "f32", value_parser = parse_type)]
        weight_type: GgmlType,
        #[arg(long, default_value_t = 256)]
        n_embd: usize,
        #[arg(long, default_value_t = 4)]
        n_layer: usize,
        #[arg(long, default_value_t = 4)]
        n_head: usize,
        #[arg(long, default_value_t = 2)]
        n_head_kv: usize,
        #[arg(long, default_value_t = 512)]
        n_ff: usize,
        /// Training context length written to the file.
        #[arg(long, default_value_t = 4096)]
        n_ctx: usize,
        /// Reuse the embedding matrix as the output matrix.
        #[arg(long)]
        tied: bool,
        /// Take the vocabulary (all tokenizer.* keys) from this GGUF instead of the built-in one.
        #[arg(long)]
        vocab_from: Option<PathBuf>,
        /// Merges of the built-in vocabulary.
        #[arg(long, default_value_t = 1000)]
        n_merges: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Convert a Hugging Face LLaVA-OneVision checkpoint (llava-hf layout) to GGUF:
    /// PREFIX-llm.gguf (the Qwen2 language model) and PREFIX-mmproj.gguf (SigLIP and projector).
    Convert {
        /// The checkpoint directory (config.json, model*.safetensors, tokenizer.json, ...).
        input: PathBuf,
        /// Output prefix.
        #[arg(short, long)]
        output: PathBuf,
        /// Type of the weight matrices: f32, f16, bf16, q8_0, q4_0, q5_0, q4_k, q5_k, q6_k.
        #[arg(long, default_value = "f16", value_parser = parse_type)]
        outtype: GgmlType,
        /// Type of the vision matrices [default: --outtype when it is f32, f16 or bf16, else f16].
        #[arg(long, value_parser = parse_type)]
        vision_type: Option<GgmlType>,
    },
    /// Quantize an F32/F16/BF16 GGUF with ggml's quantizers.
    Quantize {
        input: PathBuf,
        output: PathBuf,
        /// Target type: f32, f16, bf16, q8_0, q4_0, q5_0, q4_k, q5_k, q6_k.
        #[arg(value_parser = parse_type)]
        target: GgmlType,
    },
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .filter(|t| gguf_tools::layout::TARGETS.contains(t))
        .ok_or_else(|| format!("unknown type {s:?}; use one of {}", gguf_tools::layout::type_list()))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Inspect { file, tensors } => {
            let f = GgufFile::open(&file).map_err(|e| e.to_string())?;
            dycoke::gguf::describe(&f, &mut std::io::stdout().lock(), tensors).map_err(|e| e.to_string())
        }
        Command::Random { mmproj: true, output, weight_type, out_dim, vision_blocks, seed, .. } => {
            let spec = gguf_tools::random::MmprojSpec { out_dim, blocks: vision_blocks, weight_type, seed, ..Default::default() };
            gguf_tools::random::write_mmproj(&output, &spec)?;
            eprintln!("wrote {} (SigLIP {} blocks x {}, projector to {}, {})", output.display(), spec.blocks, spec.hidden, out_dim, weight_type);
            Ok(())
        }
        Command::Random { output, weight_type, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, tied, vocab_from, n_merges, seed, .. } => {
            let vocab = match vocab_from {
                Some(p) => Vocab::from_gguf(&GgufFile::open(&p).map_err(|e| e.to_string())?)?,
                None => Vocab::builtin(n_merges, &[]),
            };
            let spec = Qwen2Spec { n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx, tied, weight_type, seed, ..Qwen2Spec::default() };
            write_qwen2(&output, &spec, &vocab)?;
            eprintln!("wrote {} ({} tokens, {} layers, {})", output.display(), vocab.len(), n_layer, weight_type);
            Ok(())
        }
        Command::Convert { input, output, outtype, vision_type } => {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template("converting [{bar:30}] {pos}/{len} {msg}").unwrap().progress_chars("=> "));
            let opts = gguf_tools::convert::ConvertOptions { input, prefix: output, outtype, vision_type };
            let report = gguf_tools::convert::convert(&opts, &mut |done, total, name| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(name.to_string());
            });
            bar.finish_and_clear();
            let report = report.map_err(|e| e.to_string())?;
            let vision = vision_type.unwrap_or_else(|| gguf_tools::layout::default_vision_type(outtype));
            eprintln!("wrote {} and {} ({} tensors, {outtype}, vision {vision})", report.llm.display(), report.mmproj.display(), report.tensors);
            Ok(())
        }
        Command::Quantize { input, output, target } => {
            gguf_tools::quantize::quantize_file(&input, &output, target, |i, n, name| {
                eprint!("\r[{i}/{n}] {name:<48}");
            })?;
            eprintln!("\rwrote {}{:<48}", output.display(), "");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    dycoke::ggml::init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gguf-tools: {e}");
            ExitCode::FAILURE
        }
    }
}
