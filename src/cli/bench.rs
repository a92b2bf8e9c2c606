//! `dycoke bench`: speed against a baseline in the same run.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use super::benches::video::{self, check_vision_settings, encode_features, plan_modes, run_fidelity, run_llm_mode, CompressionMode, Gains, LlmReport, VideoModeOptions, VideoModeReport, VisionReport, VisionSetting};
use dycoke::encoder::EncodedMedia;
use super::benches::{describe_row, run_llm_bench, run_vision_bench, table_header, LlmBenchOptions, VisionBenchOptions};
use dycoke::{Error, ModelOptions};

use super::common::{LazyBar, DEFAULT_MODEL};
use super::hub::{self, HubSpec};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Text generation: dycoke against llama.cpp's libllama on the same GGUF and threads.
    Llm(LlmArgs),
    /// The vision encoder: seconds per frame, against the machine's matrix-product throughput for
    /// the same shapes.
    Vision(VisionArgs),
    /// What the user waits for with each vision setting and compression, against the uncompressed
    /// path of the first vision setting: time to first token, vision seconds per frame, prefill,
    /// decode, KV cache and peak memory, and their ratios. Frames are encoded once per vision
    /// setting; each encoding and each compression setting runs in its own process.
    Video(VideoArgs),
    /// How far compression moves the next-token distributions from the uncompressed model's:
    /// teacher-forced on the uncompressed greedy answer, mean KL and greedy agreement per mode.
    Fidelity(FidelityArgs),
    /// The language model's layers split over 1, 2, ... of the --rpc servers' devices, against the
    /// CPU alone: decode speed and the bytes moved between devices per decode step, per
    /// compression setting, on one video's features (encoded once, on the CPU). Each placement and
    /// setting runs in its own process. scripts/bench-rpc starts servers on loopback and runs it.
    Rpc(RpcArgs),
}

#[derive(Args)]
pub struct RpcArgs {
    #[command(flatten)]
    input: VideoInputArgs,
    /// Frames sampled from the video.
    #[arg(long, default_value_t = 8)]
    frames: usize,
    #[command(flatten)]
    measure: MeasureArgs,
}

/// How `bench video` and `bench rpc` measure each row.
#[derive(Args, Clone)]
pub struct MeasureArgs {
    /// Compression settings, comma-separated: none, dycoke, ttm (TTM alone), dp (pruning alone),
    /// dycoke-p0 (both, pruning nothing: the cost of the machinery).
    #[arg(long, value_delimiter = ',', default_value = "none,dycoke", value_parser = parse_mode)]
    modes: Vec<CompressionMode>,
    /// Tokens of each answer.
    #[arg(long, default_value_t = 32)]
    gen: usize,
    /// Answers per row (the median decode speed is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of `bench rpc`.
#[derive(serde::Serialize)]
struct RpcRow {
    /// `cpu`, or the devices holding the layers (`rpc0,rpc1`).
    placement: String,
    mode: CompressionMode,
    visual_tokens: usize,
    prefill_s: f64,
    decode_tok_s: f64,
    /// Decode speed over the CPU alone's with the same mode.
    decode_vs_cpu: f64,
    transfer_bytes_per_decode_step: f64,
    prefill_transfer_bytes: u64,
}

#[derive(Args, Clone)]
pub struct VideoInputArgs {
    /// LLM GGUF file.
    #[arg(short = 'm', long = "model", value_name = "GGUF", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Vision settings, comma-separated, each [NAME=]GGUF[@type=TYPE][@reuse=LAYER:THRESHOLD] (a
    /// vision model, optionally with the tower's matrix type as --vision-type and temporal reuse
    /// as --vision-reuse; the name defaults to the
    /// file's stem). `bench video` compares them, the first being the baseline; `bench fidelity`
    /// measures each against the uncompressed answer on the first. A real-dimension random one: gguf-tools random --mmproj -o FILE --type f16.
    #[arg(long, visible_alias = "vision-modes", value_name = "[NAME=]GGUF[@type=T][@reuse=M:T]", value_delimiter = ',', value_parser = VisionSetting::parse, required_unless_present_any = ["child_features", "hf"])]
    mmproj: Vec<VisionSetting>,
    /// The model from the Hugging Face Hub (see `run --hf`): its LLM instead of -m, and its
    /// vision model as the one vision setting when --mmproj is not given.
    #[arg(long = "hf", value_name = "REPO[:TYPE][@REV]", value_parser = HubSpec::parse, conflicts_with = "model")]
    hf: Option<HubSpec>,
    /// The video [default: models/bikes.mp4, from scripts/fetch-sample-video].
    #[arg(long, value_name = "PATH")]
    video: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// The question asked about the video.
    #[arg(long, default_value = video::DEFAULT_QUESTION)]
    question: String,
    /// Device of the measurement (see `run --device`): the vision tower and the language model
    /// (`bench rpc` encodes on the CPU and places only the language model).
    #[arg(long, value_name = "NAME", default_value = "cpu")]
    device: String,
    /// Layers of the language model on --device (llama.cpp's -ngl).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", value_name = "N", default_value_t = 0)]
    gpu_layers: usize,
    /// Add the devices of these RPC servers (see `run --rpc`).
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',')]
    rpc: Vec<String>,
}

#[derive(Args)]
pub struct VideoArgs {
    #[command(flatten)]
    input: VideoInputArgs,
    /// Frame counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    frames: Vec<usize>,
    /// Each compression setting (--modes) runs with each vision setting; the first vision setting
    /// without compression (the baseline) always runs.
    #[command(flatten)]
    measure: MeasureArgs,
    /// (Internal) measure one compression setting on saved features and print its report.
    #[arg(long, hide = true, requires = "child_features", value_parser = parse_mode)]
    child_mode: Option<CompressionMode>,
    #[arg(long, hide = true)]
    child_features: Option<PathBuf>,
    /// (Internal) encode the frames with the one vision setting, save them here and print the cost.
    #[arg(long, hide = true, conflicts_with = "child_mode")]
    child_encode: Option<PathBuf>,
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
    modes: Vec<CompressionMode>,
    /// Print one JSON object per mode instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_mode(s: &str) -> Result<CompressionMode, String> {
    CompressionMode::parse(s).ok_or_else(|| format!("unknown mode {s:?}; modes: none, dycoke, ttm, dp, dycoke-p0"))
}

/// The default sample video (fetched, not part of the repository).
pub const DEFAULT_VIDEO: &str = "models/bikes.mp4";

impl VideoInputArgs {
    /// Replaces `--hf` by the files it names (the measuring processes get plain paths).
    fn resolve_hub(mut self) -> Result<VideoInputArgs, Error> {
        let Some(spec) = self.hf.take() else { return Ok(self) };
        let m = hub::resolve(&spec, hub::Freshness::CachedFirst)?;
        self.model = m.llm;
        if self.mmproj.is_empty() {
            let Some(mmproj) = m.mmproj else {
                return Err(Error::invalid("mmproj", format!("{spec} has no vision model; give --mmproj")));
            };
            self.mmproj.push(VisionSetting { name: "hf".into(), mmproj, vision_type: dycoke::VisionType::Auto, encoder: Default::default() });
        }
        Ok(self)
    }

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
        Ok(VideoModeOptions {
            model: self.model.clone(),
            threads: self.threads(),
            gen_tokens: gen,
            reps,
            question: self.question.clone(),
            device: self.device.clone(),
            gpu_layers: self.gpu_layers,
            rpc: self.rpc.clone(),
        })
    }

    /// The one vision setting of a command that takes one.
    fn single_vision(&self, command: &str) -> Result<&VisionSetting, Error> {
        check_vision_settings(&self.mmproj)?;
        match self.mmproj.as_slice() {
            [one] => Ok(one),
            _ => Err(Error::invalid("mmproj", format!("{command} takes one vision model; give one --mmproj"))),
        }
    }

    /// Decodes and encodes `frames` frames with `vision`, with a progress bar.
    fn encode(&self, vision: &VisionSetting, frames: usize) -> Result<(EncodedMedia, dycoke::encoder::EncoderCounters), Error> {
        eprintln!("encoding {frames} frames with {}", vision.name);
        let mut bar = LazyBar::new("encoding", 1);
        let placed = ModelOptions { device: Some(self.device.clone()), gpu_layers: self.gpu_layers, rpc: self.rpc.clone(), ..vision.model_options(&self.model) };
        let f = encode_features(&placed, vision.encoder_options(self.threads()), &self.video()?, frames, &mut |d, t| bar.update(d, t));
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
    /// The LLM of a model from the Hugging Face Hub (see `run --hf`) instead of -m.
    #[arg(long = "hf", value_name = "REPO[:TYPE][@REV]", value_parser = HubSpec::parse, conflicts_with = "model")]
    hf: Option<HubSpec>,
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
        BenchCommand::Rpc(a) => run_rpc_bench(a),
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
        BenchCommand::Llm(mut a) => {
            if let Some(spec) = &a.hf {
                a.model = hub::resolve(spec, hub::Freshness::CachedFirst)?.llm;
            }
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

fn run_video(mut a: VideoArgs) -> dycoke::Result<()> {
    a.input = a.input.resolve_hub()?;
    let opts = a.input.mode_options(a.measure.gen, a.measure.reps)?;
    if let (Some(mode), Some(features)) = (a.child_mode, &a.child_features) {
        let f = EncodedMedia::load(features)?;
        let r = run_llm_mode(&opts, &f, mode)?;
        println!("{}", serde_json::to_string(&r).expect("serializable"));
        return Ok(());
    }
    if a.frames.is_empty() || a.frames.contains(&0) {
        return Err(Error::invalid("frames", "give one or more frame counts, each at least 1"));
    }
    if let Some(out) = &a.child_encode {
        let (vision, &[frames]) = (a.input.single_vision("the encoding process")?, a.frames.as_slice()) else {
            return Err(Error::invalid("frames", "the encoding process takes one frame count"));
        };
        let (f, counters) = a.input.encode(vision, frames)?;
        f.save(out)?;
        println!("{}", serde_json::to_string(&VisionReport::of(&f, &counters)).expect("serializable"));
        return Ok(());
    }
    check_vision_settings(&a.input.mmproj)?;
    let video = a.input.video()?;
    eprintln!("{} with {} on {} threads, CPU: {}", video.display(), opts.model.display(), opts.threads, dycoke::ggml::cpu_features_line());
    if !a.measure.json {
        println!("{}", video_header());
    }
    let plan = plan_modes(a.input.mmproj.len(), &a.measure.modes);
    let scratch = std::env::temp_dir().join(format!("dycoke-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let result = (|| {
        for &frames in &a.frames {
            let mut reports: Vec<VideoModeReport> = Vec::new();
            for (v, vision) in a.input.mmproj.iter().enumerate() {
                let path = scratch.join(format!("features-{frames}-{v}.bin"));
                let encoded = child_encode(&a, vision, frames, &path)?;
                for &(_, mode) in plan.iter().filter(|p| p.0 == v) {
                    let llm = child_llm(&a, &path, mode)?;
                    let r = VideoModeReport::new(&vision.name, mode, &encoded, &llm);
                    if a.measure.json {
                        println!("{}", serde_json::to_string(&r).expect("serializable"));
                    } else {
                        println!("{}", video_row(&r));
                    }
                    reports.push(r);
                }
                std::fs::remove_file(&path).ok();
            }
            if !a.measure.json {
                let (base, rest) = reports.split_first().expect("the plan starts with the baseline");
                for r in rest {
                    println!("{}", ratio_row(r, &Gains::over(base, r)));
                }
            }
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&scratch).ok();
    result
}

/// This executable running `bench video` with `args` and the shared options, as a child process;
/// returns its one-line JSON report.
fn run_child<T: serde::de::DeserializeOwned>(a: &VideoArgs, what: &str, args: &[&std::ffi::OsStr]) -> dycoke::Result<T> {
    let exe = std::env::current_exe().map_err(|e| Error::invalid("bench", format!("cannot find this executable: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "video"]).args(args);
    cmd.arg("-m").arg(&a.input.model).args(["-t", &a.input.threads().to_string(), "--gen", &a.measure.gen.to_string(), "--reps", &a.measure.reps.to_string()]);
    cmd.arg("--question").arg(&a.input.question);
    cmd.args(["--device", &a.input.device, "-ngl", &a.input.gpu_layers.to_string()]);
    if !a.input.rpc.is_empty() {
        cmd.arg("--rpc").arg(a.input.rpc.join(","));
    }
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().map_err(|e| Error::invalid("bench", format!("cannot run the {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::invalid("bench", format!("the {what} failed ({})", out.status)));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).map_err(|e| Error::invalid("bench", format!("the {what} printed no report: {e}")))
}

/// Encodes `frames` frames with `vision` in a child process, saving the features to `features`.
fn child_encode(a: &VideoArgs, vision: &VisionSetting, frames: usize, features: &std::path::Path) -> dycoke::Result<VisionReport> {
    let video = a.input.video()?;
    let (spec, frames) = (vision.spec(), frames.to_string());
    let args: [&std::ffi::OsStr; 8] =
        ["--child-encode".as_ref(), features.as_ref(), "--mmproj".as_ref(), spec.as_ref(), "--frames".as_ref(), frames.as_ref(), "--video".as_ref(), video.as_ref()];
    run_child(a, &format!("encoding with {}", vision.name), &args)
}

/// Measures compression `mode` on saved features in a child process.
fn child_llm(a: &VideoArgs, features: &std::path::Path, mode: CompressionMode) -> dycoke::Result<LlmReport> {
    let args: [&std::ffi::OsStr; 4] = ["--child-mode".as_ref(), mode.name().as_ref(), "--child-features".as_ref(), features.as_ref()];
    run_child(a, &format!("{} measurement", mode.name()), &args)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn video_header() -> String {
    format!(
        "{:>6} {:<18} {:>7} {:>8} {:>8} {:>7} {:>6} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}",
        "frames", "mode", "visual", "decode s", "vision s", "s/frame", "TTM ms", "prefill s", "TTFT s", "decode/s", "e2e s", "KV MiB", "peak MiB", "scoring"
    )
}

fn video_row(r: &VideoModeReport) -> String {
    format!(
        "{:>6} {:<18} {:>7} {:>8.2} {:>8.2} {:>7.3} {:>6.1} {:>9.2} {:>8.2} {:>8.2} {:>8.2} {:>7.1} {:>8.0} {:>7.2}%",
        r.frames,
        r.mode,
        r.visual_tokens,
        r.video_decode_s,
        r.vision_s,
        r.vision_s_per_frame,
        r.ttm_s * 1000.0,
        r.prefill_s,
        r.ttft_s,
        r.decode_tok_s,
        r.end_to_end_s,
        mib(r.kv_bytes as u64),
        r.peak_rss_bytes.map_or(f64::NAN, mib),
        r.scoring_share * 100.0
    )
}

/// `r`'s gains over the baseline, in the columns of its row.
fn ratio_row(r: &VideoModeReport, g: &Gains) -> String {
    let x = |v: f64, w: usize| format!("{:>w$}", format!("{v:.2}x"));
    format!(
        "{:>6} {:<18} {} {:>8} {:>8} {} {:>6} {} {} {} {} {} {} (gain over the baseline)",
        r.frames,
        r.mode,
        x(g.visual_tokens, 7),
        "",
        "",
        x(g.vision_s_per_frame, 7),
        "",
        x(g.prefill_s, 9),
        x(g.ttft_s, 8),
        x(g.decode_tok_s, 8),
        x(g.end_to_end_s, 8),
        x(g.kv_bytes, 7),
        g.peak_rss_bytes.map_or(format!("{:>8}", "-"), |p| x(p, 8)),
    )
}

fn run_fidelity_bench(mut a: FidelityArgs) -> dycoke::Result<()> {
    a.input = a.input.resolve_hub()?;
    let opts = a.input.mode_options(a.steps, 1)?;
    let video = a.input.video()?;
    eprintln!("{} with {} on {} threads, {} frames, {} greedy steps", video.display(), opts.model.display(), opts.threads, a.frames, a.steps);
    check_vision_settings(&a.input.mmproj)?;
    let mut features = Vec::new();
    for vision in &a.input.mmproj {
        features.push((vision.name.clone(), a.input.encode(vision, a.frames)?.0));
    }
    if !a.json {
        println!(
            "{:<24} {:>8} {:>6} {:>10} {:>10} {:>10} {:>7} {:>8} {:>6} {:>10} {:>8}",
            "mode", "visual", "steps", "mean KL", "max KL", "agreement", "fresh", "recalls", "kept", "min cos", "TTM ovl"
        );
    }
    run_fidelity(&opts, &features, a.steps, &a.modes, &mut |r| {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("serializable"));
        } else {
            println!(
                "{:<24} {:>8} {:>6} {:>10.4} {:>10.4} {:>9.1}% {:>7} {:>8} {:>6.3} {:>10.6} {:>7.1}%",
                format!("{}/{}", r.vision, r.mode.name()),
                r.visual_tokens,
                r.steps,
                r.mean_kl,
                r.max_kl,
                r.greedy_agreement * 100.0,
                r.fresh_selections,
                r.recalls,
                r.mean_kept_fraction,
                r.min_frame_cosine,
                r.ttm_overlap * 100.0
            );
        }
    })?;
    Ok(())
}

fn run_rpc_bench(mut a: RpcArgs) -> dycoke::Result<()> {
    a.input = a.input.resolve_hub()?;
    if a.input.rpc.is_empty() {
        return Err(Error::invalid("rpc", "give the servers to split over with --rpc HOST:PORT,... (scripts/bench-rpc starts them on loopback)"));
    }
    if a.frames == 0 {
        return Err(Error::invalid("frames", "must be at least 1"));
    }
    let vision = a.input.single_vision("bench rpc")?.clone();
    a.input.mode_options(a.measure.gen, a.measure.reps)?;
    let video = a.input.video()?;
    // Every placement measures in a child process of `bench video` with its own device settings.
    let args = |device: &str, gpu_layers: usize, rpc: &[String]| VideoArgs {
        input: VideoInputArgs { device: device.to_string(), gpu_layers, rpc: rpc.to_vec(), ..a.input.clone() },
        frames: vec![a.frames],
        measure: MeasureArgs { json: true, ..a.measure.clone() },
        child_mode: None,
        child_features: None,
        child_encode: None,
    };
    let cpu = args("cpu", 0, &[]);
    let mut placements = vec![("cpu".to_string(), cpu)];
    for k in 1..=a.input.rpc.len() {
        let devices = (0..k).map(|i| format!("rpc{i}")).collect::<Vec<_>>().join(",");
        // Every layer on the servers' devices (more than any model has; the CPU keeps nothing).
        placements.push((devices.clone(), args(&devices, 1 << 20, &a.input.rpc)));
    }
    eprintln!("{} with {}, {} frames, on {} threads; servers: {}", video.display(), a.input.model.display(), a.frames, a.input.threads(), a.input.rpc.join(", "));
    let scratch = std::env::temp_dir().join(format!("dycoke-bench-rpc-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let features = scratch.join("features.bin");
    let result = (|| {
        child_encode(&placements[0].1, &vision, a.frames, &features)?;
        if !a.measure.json {
            println!("{:<20} {:<8} {:>7} {:>9} {:>9} {:>7} {:>12} {:>12}", "placement", "mode", "visual", "prefill s", "decode/s", "vs CPU", "KiB/step", "prefill MiB");
        }
        for &mode in &a.measure.modes {
            let mut cpu_speed = None;
            for (placement, pa) in &placements {
                let l = child_llm(pa, &features, mode)?;
                let base = *cpu_speed.get_or_insert(l.decode_tokens_per_s);
                let row = RpcRow {
                    placement: placement.clone(),
                    mode,
                    visual_tokens: l.visual_tokens,
                    prefill_s: l.prefill_s,
                    decode_tok_s: l.decode_tokens_per_s,
                    decode_vs_cpu: l.decode_tokens_per_s / base.max(1e-9),
                    transfer_bytes_per_decode_step: l.transfer_bytes_per_decode_step,
                    prefill_transfer_bytes: l.prefill_transfer_bytes,
                };
                if a.measure.json {
                    println!("{}", serde_json::to_string(&row).expect("serializable"));
                } else {
                    println!(
                        "{:<20} {:<8} {:>7} {:>9.2} {:>9.2} {:>6.2}x {:>12.1} {:>12.2}",
                        row.placement,
                        mode.name(),
                        row.visual_tokens,
                        row.prefill_s,
                        row.decode_tok_s,
                        row.decode_vs_cpu,
                        row.transfer_bytes_per_decode_step / 1024.0,
                        mib(row.prefill_transfer_bytes)
                    );
                }
            }
        }
        Ok(())
    })();
    std::fs::remove_dir_all(&scratch).ok();
    result
}
