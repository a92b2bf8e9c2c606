//! `dycoke bench`: speed against a baseline in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use super::benches::video::{self, encode_features, run_fidelity, run_video_mode, VideoMode, VideoModeOptions, VideoModeReport};
use dycoke::encoder::EncodedMedia;
use super::benches::{describe_row, run_llm_bench, run_vision_bench, table_header, LlmBenchOptions, VisionBenchOptions};
use dycoke::Error;

use super::common::{LazyBar, DEFAULT_MODEL};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Text generation: dycoke against llama.cpp's libllama on the same GGUF and threads.
    Llm(LlmArgs),
    /// The vision encoder: seconds per frame, against the machine's matrix-product throughput for
    /// the same shapes.
    Vision(VisionArgs),
    /// A video answer without compression and with DyCoke, side by side: visual tokens, vision
    /// encode, prefill, decode, end to end, KV cache and peak memory, and their ratios. Each mode
    /// runs in its own process (peak memory is its own) on frames encoded once.
    Video(VideoArgs),
    /// How far compression moves the next-token distributions from the uncompressed model's:
    /// teacher-forced on the uncompressed greedy answer, mean KL and greedy agreement per mode.
    Fidelity(FidelityArgs),
}

#[derive(Args, Clone)]
pub struct VideoInputArgs {
    /// LLM GGUF file.
    #[arg(short = 'm', long = "model", value_name = "GGUF", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Vision model GGUF (a real-dimension random one: gguf-tools random --mmproj -o FILE --type f16).
    #[arg(long, value_name = "GGUF", required_unless_present = "child_features")]
    mmproj: Option<PathBuf>,
    /// The video [default: models/bikes.mp4, from scripts/fetch-sample-video].
    #[arg(long, value_name = "PATH")]
    video: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// The question asked about the video.
    #[arg(long, default_value = video::DEFAULT_QUESTION)]
    question: String,
}

#[derive(Args)]
pub struct VideoArgs {
    #[command(flatten)]
    input: VideoInputArgs,
    /// Frame counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    frames: Vec<usize>,
    /// Modes, comma-separated: none, dycoke, ttm (TTM alone), dp (pruning alone), dycoke-p0 (both,
    /// pruning nothing: the cost of the machinery).
    #[arg(long, value_delimiter = ',', default_value = "none,dycoke", value_parser = parse_mode)]
    modes: Vec<VideoMode>,
    /// Tokens of each answer.
    #[arg(long, default_value_t = 32)]
    gen: usize,
    /// Answers per mode (the median decode speed is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object per mode and frame count instead of a table.
    #[arg(long)]
    json: bool,
    /// (Internal) measure one mode on saved features and print its report.
    #[arg(long, hide = true, requires = "child_features", value_parser = parse_mode)]
    child_mode: Option<VideoMode>,
    #[arg(long, hide = true)]
    child_features: Option<PathBuf>,
}

#[derive(Args)]
pub struct FidelityArgs {
    #[command(flatten)]
    input: VideoInputArgs,
    #[arg(long, default_value_t = 32)]
    frames: usize,
    /// Greedy steps compared.
    #[arg(long, default_value_t = 64)]
    steps: usize,
    #[arg(long, value_delimiter = ',', default_value = "ttm,dp,dycoke", value_parser = parse_mode)]
    modes: Vec<VideoMode>,
    /// Print one JSON object per mode instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_mode(s: &str) -> Result<VideoMode, String> {
    VideoMode::parse(s).ok_or_else(|| format!("unknown mode {s:?}; modes: none, dycoke, ttm, dp, dycoke-p0"))
}

/// The default sample video (fetched, not part of the repository).
pub const DEFAULT_VIDEO: &str = "models/bikes.mp4";

impl VideoInputArgs {
    fn threads(&self) -> usize {
        self.threads.unwrap_or_else(dycoke::session::default_threads)
    }

    fn video(&self) -> Result<PathBuf, Error> {
        let p = self.video.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_VIDEO));
        if !p.exists() {
            let hint = if self.video.is_none() { "; fetch it with scripts/fetch-sample-video or pass --video FILE" } else { "" };
            return Err(Error::invalid("video", format!("{} does not exist{hint}", p.display())));
        }
        Ok(p)
    }

    fn mode_options(&self, gen: usize, reps: usize) -> Result<VideoModeOptions, Error> {
        if !self.model.exists() {
            return Err(Error::invalid("model", format!("{} does not exist; fetch it with scripts/fetch-qwen2-0.5b or pass -m FILE.gguf", self.model.display())));
        }
        Ok(VideoModeOptions { model: self.model.clone(), threads: self.threads(), gen_tokens: gen, reps, question: self.question.clone() })
    }

    /// Decodes and encodes `frames` frames, with a progress bar.
    fn encode(&self, frames: usize) -> Result<EncodedMedia, Error> {
        let mmproj = self.mmproj.clone().ok_or_else(|| Error::invalid("mmproj", "the benchmark encodes video: pass --mmproj FILE.gguf"))?;
        let model = dycoke::ModelOptions { mmproj: Some(mmproj), ..dycoke::ModelOptions::new(&self.model) };
        eprintln!("encoding {frames} frames");
        let mut bar = LazyBar::new("encoding", 1);
        let f = encode_features(&model, &self.video()?, frames, self.threads(), &mut |d, t| bar.update(d, t));
        bar.finish();
        f
    }
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
    /// Type the matrices are multiplied in: auto, or f32, f16, bf16, q8_0, q4_0, ... (converted at load).
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    vision_type: String,
    /// Keep every matrix in the file mapping's layout (no repacked copies), to measure repacking.
    #[arg(long)]
    no_repack: bool,
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
        BenchCommand::Video(a) => run_video(a),
        BenchCommand::Fidelity(a) => run_fidelity_bench(a),
        BenchCommand::Vision(a) => {
            let opts = VisionBenchOptions {
                mmproj: a.mmproj.clone(),
                threads: a.threads.unwrap_or_else(dycoke::session::default_threads),
                frames: a.frames,
                batch: a.batch,
                reps: a.reps,
                llama_cpp_llm: a.llama_cpp_llm.clone(),
                vision_type: dycoke::VisionType::parse(&a.vision_type)?,
                repack: !a.no_repack,
            };
            eprintln!("{} on {} threads, CPU: {}", a.mmproj.display(), opts.threads, dycoke::ggml::cpu_features_line());
            let r = run_vision_bench(&opts)?;
            if a.json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!("weights                {}", r.weight_type);
                println!("layout                 {}", r.layout);
                println!("load seconds           {:.2}", r.load_s);
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

fn run_video(a: VideoArgs) -> dycoke::Result<()> {
    let opts = a.input.mode_options(a.gen, a.reps)?;
    if let (Some(mode), Some(features)) = (a.child_mode, &a.child_features) {
        let f = EncodedMedia::load(features)?;
        let r = run_video_mode(&opts, &f, mode)?;
        println!("{}", serde_json::to_string(&r).expect("serializable"));
        return Ok(());
    }
    if a.frames.is_empty() || a.frames.contains(&0) {
        return Err(Error::invalid("frames", "give one or more frame counts, each at least 1"));
    }
    let video = a.input.video()?;
    eprintln!("{} with {} on {} threads, CPU: {}", video.display(), opts.model.display(), opts.threads, dycoke::ggml::cpu_features_line());
    if !a.json {
        println!("{}", video_header());
    }
    let scratch = std::env::temp_dir().join(format!("dycoke-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let result = (|| {
        for &frames in &a.frames {
            let features = a.input.encode(frames)?;
            let path = scratch.join(format!("features-{frames}.bin"));
            features.save(&path)?;
            let mut reports = Vec::new();
            for &mode in &a.modes {
                let r = run_child(&a, &path, mode)?;
                if a.json {
                    println!("{}", serde_json::to_string(&r).expect("serializable"));
                } else {
                    println!("{}", video_row(&r));
                }
                reports.push(r);
            }
            if !a.json {
                if let Some(base) = reports.iter().find(|r| r.mode == VideoMode::None) {
                    for r in reports.iter().filter(|r| r.mode != VideoMode::None) {
                        println!("{}", ratio_row(base, r));
                    }
                }
            }
            std::fs::remove_file(&path).ok();
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&scratch).ok();
    result
}

/// Runs one mode in a child process of this executable.
fn run_child(a: &VideoArgs, features: &std::path::Path, mode: VideoMode) -> dycoke::Result<VideoModeReport> {
    let exe = std::env::current_exe().map_err(|e| Error::invalid("bench", format!("cannot find this executable: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "video", "--child-mode", mode.name()]).arg("--child-features").arg(features);
    cmd.arg("-m").arg(&a.input.model).args(["-t", &a.input.threads().to_string(), "--gen", &a.gen.to_string(), "--reps", &a.reps.to_string()]);
    cmd.arg("--question").arg(&a.input.question);
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().map_err(|e| Error::invalid("bench", format!("cannot run the {} measurement: {e}", mode.name())))?;
    if !out.status.success() {
        return Err(Error::invalid("bench", format!("the {} measurement failed ({})", mode.name(), out.status)));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).map_err(|e| Error::invalid("bench", format!("the {} measurement printed no report: {e}", mode.name())))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn video_header() -> String {
    format!(
        "{:>6} {:<10} {:>8} {:>9} {:>7} {:>9} {:>8} {:>9} {:>8} {:>9} {:>8}",
        "frames", "mode", "visual", "vision s", "TTM ms", "prefill s", "decode/s", "e2e s", "KV MiB", "peak MiB", "scoring"
    )
}

fn video_row(r: &VideoModeReport) -> String {
    format!(
        "{:>6} {:<10} {:>8} {:>9.1} {:>7.1} {:>9.2} {:>8.2} {:>9.2} {:>8.1} {:>9.0} {:>7.2}%",
        r.frames,
        r.mode.name(),
        r.visual_tokens,
        r.vision_encode_s,
        r.ttm_s * 1000.0,
        r.prefill_s,
        r.decode_tokens_per_s,
        r.end_to_end_s,
        mib(r.kv_cache_bytes as u64),
        r.peak_rss_bytes.map_or(f64::NAN, mib),
        r.scoring_share * 100.0
    )
}

/// The gains of `r` over the uncompressed `base` (above 1: better).
fn ratio_row(base: &VideoModeReport, r: &VideoModeReport) -> String {
    let peak = match (base.peak_rss_bytes, r.peak_rss_bytes) {
        (Some(b), Some(x)) => format!("{:>8.2}x", b as f64 / x as f64),
        _ => format!("{:>9}", "-"),
    };
    format!(
        "{:>6} {:<10} {:>7.2}x {:>9} {:>7} {:>8.2}x {:>7.2}x {:>8.2}x {:>7.2}x {} (gain over none)",
        r.frames,
        r.mode.name(),
        base.visual_tokens as f64 / r.visual_tokens.max(1) as f64,
        "",
        "",
        base.prefill_s / r.prefill_s.max(1e-9),
        r.decode_tokens_per_s / base.decode_tokens_per_s.max(1e-9),
        base.end_to_end_s / r.end_to_end_s.max(1e-9),
        base.kv_cache_bytes as f64 / r.kv_cache_bytes.max(1) as f64,
        peak
    )
}

fn run_fidelity_bench(a: FidelityArgs) -> dycoke::Result<()> {
    let opts = a.input.mode_options(a.steps, 1)?;
    let video = a.input.video()?;
    eprintln!("{} with {} on {} threads, {} frames, {} greedy steps", video.display(), opts.model.display(), opts.threads, a.frames, a.steps);
    let features = a.input.encode(a.frames)?;
    if !a.json {
        println!("{:<10} {:>8} {:>6} {:>10} {:>10} {:>10} {:>7} {:>8} {:>6}", "mode", "visual", "steps", "mean KL", "max KL", "agreement", "fresh", "recalls", "kept");
    }
    run_fidelity(&opts, &features, a.steps, &a.modes, &mut |r| {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("serializable"));
        } else {
            println!(
                "{:<10} {:>8} {:>6} {:>10.4} {:>10.4} {:>9.1}% {:>7} {:>8} {:>6.3}",
                r.mode.name(),
                r.visual_tokens,
                r.steps,
                r.mean_kl,
                r.max_kl,
                r.greedy_agreement * 100.0,
                r.fresh_selections,
                r.recalls,
                r.mean_kept_fraction
            );
        }
    })?;
    Ok(())
}
