//! Options shared by several subcommands, and small terminal helpers.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use dycoke::llm::kv_cache::KvType;
use dycoke::compress::Compression;
use dycoke::conversation::ConversationOptions;
use dycoke::encoder::EncoderOptions;
use dycoke::media::Sampling;
use dycoke::{Error, GenerateParams, ModelOptions, Phase, SamplerParams, SessionOptions, Setting, VisionType};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use super::hub::{self, HubSpec};

/// The model a command runs when `-m` is not given: the file `scripts/fetch-qwen2-0.5b` fetches.
pub const DEFAULT_MODEL: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// LLM GGUF file [default: models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, from scripts/fetch-qwen2-0.5b].
    #[arg(short = 'm', long = "model", value_name = "GGUF")]
    pub model: Option<PathBuf>,
    /// Vision model GGUF (SigLIP and projector), needed for --video and --image.
    #[arg(long, value_name = "GGUF")]
    pub mmproj: Option<PathBuf>,
    /// Model from the Hugging Face Hub (-hf): a transformers LLaVA-OneVision checkpoint, converted
    /// on first use to TYPE (default f16), or a GGUF repository, TYPE picking the quantization
    /// (default Q4_K_M when there are several). Cached in HF_HOME; see `dycoke pull`.
    #[arg(long = "hf", visible_alias = "hf-repo", value_name = "REPO[:TYPE][@REV]", value_parser = HubSpec::parse, conflicts_with_all = ["model", "mmproj"])]
    pub hf: Option<HubSpec>,
    /// Compute device: `cpu`, a GPU of a build with the cuda/metal/vulkan feature, or a device of an
    /// --rpc server (`rpc0` for the first). A list (`rpc0,rpc1`) divides the -ngl layers into equal
    /// runs over those devices; the CPU runs the rest.
    #[arg(long, value_name = "NAME", default_value = "cpu")]
    pub device: String,
    /// Add the devices of `dycoke rpc-server` (or llama.cpp `rpc-server`) processes, comma-separated;
    /// the first server's device is `rpc0`. The protocol has no authentication: use servers on
    /// loopback or a trusted network only.
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// Layers to offload to the GPU (llama.cpp's -ngl); no effect on the CPU.
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", value_name = "N", default_value_t = 0)]
    pub gpu_layers: usize,
    /// With a --device list: the share of the -ngl layers each device holds, comma-separated
    /// (llama.cpp's -ts: `3,1` puts three quarters on the first) [default: equal shares].
    #[arg(long = "tensor-split", value_name = "SHARES", value_delimiter = ',')]
    pub tensor_split: Vec<f32>,
    /// Keep every weight in the file mapping (no repacked copies; slower on some CPUs).
    #[arg(long)]
    pub no_repack: bool,
    /// Type the vision matrices are multiplied in: auto (F16 and BF16 widened to F32 where ggml runs
    /// AVX-512, the fastest measured; others as stored), or f32, f16, bf16, q8_0, q4_0, ...
    /// (converted once at load).
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    pub vision_type: String,
}

impl ModelArgs {
    pub fn options(&self) -> Result<ModelOptions, Error> {
        let vision_type = VisionType::parse(&self.vision_type)?;
        if let Some(spec) = &self.hf {
            let m = hub::resolve(spec, hub::Freshness::CachedFirst)?;
            return Ok(ModelOptions { llm: m.llm, mmproj: m.mmproj, device: Some(self.device.clone()), rpc: self.rpc.clone(), gpu_layers: self.gpu_layers, tensor_split: self.tensor_split.clone(), repack: !self.no_repack, vision_type });
        }
        let path = match &self.model {
            Some(p) => p.clone(),
            None => {
                let p = PathBuf::from(DEFAULT_MODEL);
                if !p.exists() {
                    return Err(Error::invalid(
                        "model",
                        format!("no -m given and the default {DEFAULT_MODEL} does not exist; fetch it with scripts/fetch-qwen2-0.5b, pass -m FILE.gguf, or -hf REPO"),
                    ));
                }
                p
            }
        };
        Ok(ModelOptions { llm: path, mmproj: self.mmproj.clone(), device: Some(self.device.clone()), rpc: self.rpc.clone(), gpu_layers: self.gpu_layers, tensor_split: self.tensor_split.clone(), repack: !self.no_repack, vision_type })
    }
}

#[derive(Args, Clone)]
pub struct ContextArgs {
    /// Context size in tokens (prompt and answer) [default: 8192, or the model's training context if smaller].
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Prompt tokens evaluated per step.
    #[arg(short = 'b', long = "batch-size", value_name = "N", default_value_t = 512)]
    pub batch_size: usize,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// KV cache type: f16 or q8_0.
    #[arg(long = "cache-type", value_name = "TYPE", default_value = "f16", value_parser = parse_kv_type)]
    pub cache_type: KvType,
}

fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("unknown cache type {s:?}; use f16 or q8_0"))
}

impl ContextArgs {
    pub fn options(&self) -> Result<SessionOptions, Error> {
        if self.ctx_size == Some(0) {
            return Err(Error::setting(Setting::ContextSize, "must be at least 1 (leave it out for the default)"));
        }
        Ok(SessionOptions {
            n_ctx: self.ctx_size.unwrap_or(0),
            n_batch: self.batch_size,
            n_threads: self.threads.unwrap_or_else(dycoke::session::default_threads),
            kv_type: self.cache_type,
        })
    }

    /// A conversation's settings: these, with `compression`, `sampling` and `system`.
    pub fn conversation(&self, compression: Compression, sampling: Sampling, system: Option<String>) -> Result<ConversationOptions, Error> {
        let session = self.options()?;
        let encoder = EncoderOptions { n_threads: session.n_threads, ..EncoderOptions::default() };
        Ok(ConversationOptions { session, compression, sampling, encoder, system })
    }
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long = "n-predict", value_name = "N", default_value_t = 256)]
    pub n_predict: usize,
    /// Sampling temperature; 0 is greedy (the default, as in evaluations).
    #[arg(long = "temp", value_name = "T", default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, value_name = "K", default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this probability mass.
    #[arg(long, value_name = "P", default_value_t = 0.95, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(long, value_name = "P", default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise recently generated tokens (1: off).
    #[arg(long, value_name = "X", default_value_t = 1.0, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty considers.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed [default: from the clock].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Keep generating after the model ends its turn.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<GenerateParams, Error> {
        let sampler = SamplerParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        sampler.validate()?;
        if self.n_predict == 0 {
            return Err(Error::setting(Setting::MaxTokens, "must be at least 1"));
        }
        Ok(GenerateParams { max_tokens: self.n_predict, sampler, ignore_eos: self.ignore_eos })
    }
}

/// A progress bar on stderr for `total` steps, shown only on a terminal and only for work large
/// enough to take a moment.
pub fn progress_bar(total: usize, what: &str, min_total: usize) -> Option<ProgressBar> {
    if total < min_total || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>15} [{bar:30}] {pos}/{len} {rate} eta {eta}")
            .unwrap()
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                // indicatif's own {per_sec} prints four decimals ("261,084.4518/s").
                let r = s.per_sec();
                let _ = if r < 10.0 { write!(w, "{r:.1}/s") } else { write!(w, "{r:.0}/s") };
            })
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    Some(bar)
}

/// A progress bar that appears on the first update, once the total is known, when the work is at
/// least `min_total` steps and stderr is a terminal.
pub struct LazyBar {
    label: &'static str,
    min_total: usize,
    bar: Option<ProgressBar>,
    decided: bool,
}

impl LazyBar {
    pub fn new(label: &'static str, min_total: usize) -> LazyBar {
        LazyBar { label, min_total, bar: None, decided: false }
    }

    pub fn update(&mut self, done: usize, total: usize) {
        if !self.decided {
            self.bar = progress_bar(total, self.label, self.min_total);
            self.decided = true;
        }
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Loads a model with a spinner on a terminal: loading takes seconds when the vision matrices
/// are converted or repacked, and nothing else would show that work is going on.
pub fn load_model(options: &ModelOptions) -> Result<std::sync::Arc<dycoke::Model>, Error> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner();
        s.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap());
        let what = if options.mmproj.is_some() { "loading the model and its vision tower" } else { "loading the model" };
        s.set_message(what);
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    });
    let model = dycoke::Model::load(options);
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    model
}

/// "N tokens in T s (R tok/s)"
pub fn rate(n: usize, secs: f64) -> String {
    let r = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    format!("{n} tokens in {secs:.2} s ({r:.1} tok/s)")
}

/// One progress bar per slow phase (decoding frames, encoding them, evaluating the prompt), each
/// replacing the one before.
#[derive(Default)]
pub struct PhaseBars {
    current: Option<(Phase, LazyBar)>,
}

impl PhaseBars {
    pub fn update(&mut self, phase: Phase, done: usize, total: usize) -> bool {
        if self.current.as_ref().is_none_or(|(p, _)| *p != phase) {
            self.finish();
            let (label, min_total) = match phase {
                Phase::Decoding => ("decoding frames", 2),
                Phase::Encoding => ("encoding frames", 2),
                Phase::Prefill => ("prompt tokens", 256),
            };
            self.current = Some((phase, LazyBar::new(label, min_total)));
        }
        if let Some((_, b)) = &mut self.current {
            b.update(done, total);
        }
        true
    }

    pub fn finish(&mut self) {
        if let Some((_, b)) = self.current.take() {
            b.finish();
        }
    }
}
