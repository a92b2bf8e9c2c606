//! Benchmarks that compare this engine with a baseline in the same run, reported as ratios.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use dycoke::error::{Error, Result};
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::model::{Model, ModelOptions};
use dycoke_oracle::{RefContext, RefModel};

/// Settings of the LLM benchmark (ours against llama.cpp's libllama on the same file).
#[derive(Clone, Debug)]
pub struct LlmBenchOptions {
    pub model: PathBuf,
    pub threads: usize,
    /// Prompt length of the prefill test.
    pub prompt_tokens: usize,
    /// Tokens generated per decode test.
    pub gen_tokens: usize,
    /// Tokens already in the cache for each decode test.
    pub depths: Vec<usize>,
    /// Repetitions (the median is reported).
    pub reps: usize,
}

/// One row: a test, our speed, llama.cpp's, and the ratio (above 1: we are faster).
#[derive(Clone, Debug, Serialize)]
pub struct LlmBenchRow {
    pub test: String,
    pub threads: usize,
    pub ours_tokens_per_s: f64,
    pub llama_cpp_tokens_per_s: f64,
    pub ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A fixed pseudo-random token sequence (as llama-bench, random tokens: the content does not
/// change the work).
fn bench_tokens(n: usize, n_vocab: usize) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n_vocab as u64) as u32
        })
        .collect()
}

/// Runs one timed measurement of each engine per repetition, alternating which goes first and
/// pausing before each so that the other's thread pool has gone idle (on a small machine a
/// spinning pool would take the cores). Returns tokens/s for (ours, theirs).
fn alternate(
    reps: usize,
    ours: &mut dyn FnMut() -> Result<f64>,
    theirs: &mut dyn FnMut() -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for first_ours in [rep % 2 == 0, rep % 2 != 0] {
            std::thread::sleep(Duration::from_millis(100));
            if first_ours {
                a.push(ours()?);
            } else {
                b.push(theirs()?);
            }
        }
    }
    Ok((a, b))
}

/// Runs the benchmark; `progress` receives each row as it is measured.
pub fn run_llm_bench(opts: &LlmBenchOptions, progress: &mut dyn FnMut(&LlmBenchRow)) -> Result<Vec<LlmBenchRow>> {
    if opts.reps == 0 || opts.gen_tokens == 0 || opts.prompt_tokens == 0 {
        return Err(Error::invalid("bench", "repetitions, prompt and generated tokens must be at least 1"));
    }
    let model = Model::load(&ModelOptions::new(&opts.model))?;
    let reference = RefModel::load(&opts.model, false)
        .ok_or_else(|| Error::invalid("bench", format!("llama.cpp could not load {}", opts.model.display())))?;
    let n_vocab = model.llm().params().n_vocab.min(reference.n_vocab());
    let mut depths = opts.depths.clone();
    depths.sort_unstable();
    let max_depth = depths.last().copied().unwrap_or(0);
    let n_ctx = (max_depth + opts.gen_tokens + 1).max(opts.prompt_tokens).div_ceil(256) * 256;
    if n_ctx > model.llm().params().n_ctx_train {
        return Err(Error::invalid("bench", format!("depth {max_depth} exceeds the model's context {}", model.llm().params().n_ctx_train)));
    }
    let tokens = bench_tokens(max_depth.max(opts.prompt_tokens) + opts.gen_tokens + 1, n_vocab);
    let ref_tokens: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    let mut ours = LlmContext::new(model.llm().clone(), &LlmOptions::new(n_ctx, opts.threads))?;
    let mut theirs = RefContext::new(&reference, n_ctx as u32, 512, opts.threads as i32).ok_or_else(ref_failed)?;
    let mut rows = Vec::new();

    // Prefill from an empty cache (one untimed run first: graph build and page faults).
    let p = opts.prompt_tokens;
    ours.eval(&[Segment::Tokens(&tokens[..p])])?;
    theirs.decode_tokens(&ref_tokens[..p]).map_err(ref_decode)?;
    let (a, b) = alternate(
        opts.reps,
        &mut || {
            ours.truncate(0);
            let t = Instant::now();
            ours.eval(&[Segment::Tokens(&tokens[..p])])?;
            Ok(p as f64 / t.elapsed().as_secs_f64())
        },
        &mut || {
            theirs.truncate(0);
            let t = Instant::now();
            theirs.decode_tokens(&ref_tokens[..p]).map_err(ref_decode)?;
            Ok(p as f64 / t.elapsed().as_secs_f64())
        },
    )?;
    rows.push(row(format!("prefill {p}"), opts.threads, median(a), median(b)));
    progress(rows.last().unwrap());

    // Decode at each depth: fill the caches up to the depth (extending the previous fill), then
    // generate and cut back to the depth each repetition.
    let mut filled = 0;
    ours.truncate(0);
    theirs.truncate(0);
    for depth in depths {
        if depth > filled {
            ours.truncate(filled);
            theirs.truncate(filled);
            ours.eval(&[Segment::Tokens(&tokens[filled..depth])])?;
            theirs.decode_tokens(&ref_tokens[filled..depth]).map_err(ref_decode)?;
            filled = depth;
        }
        let gen = &tokens[depth..depth + opts.gen_tokens];
        let ref_gen = &ref_tokens[depth..depth + opts.gen_tokens];
        // Warm-up: builds the decode graphs for this depth.
        ours.truncate(depth);
        ours.eval(&[Segment::Tokens(&gen[..1])])?;
        theirs.truncate(depth);
        theirs.decode_tokens(&ref_gen[..1]).map_err(ref_decode)?;
        let (a, b) = alternate(
            opts.reps,
            &mut || {
                ours.truncate(depth);
                let t = Instant::now();
                for tok in gen {
                    ours.eval(&[Segment::Tokens(std::slice::from_ref(tok))])?;
                }
                Ok(gen.len() as f64 / t.elapsed().as_secs_f64())
            },
            &mut || {
                theirs.truncate(depth);
                let t = Instant::now();
                for &tok in ref_gen {
                    theirs.decode_tokens(&[tok]).map_err(ref_decode)?;
                }
                Ok(ref_gen.len() as f64 / t.elapsed().as_secs_f64())
            },
        )?;
        rows.push(row(format!("decode {} @ depth {depth}", opts.gen_tokens), opts.threads, median(a), median(b)));
        progress(rows.last().unwrap());
    }
    Ok(rows)
}

fn row(test: String, threads: usize, ours: f64, llama: f64) -> LlmBenchRow {
    LlmBenchRow { test, threads, ours_tokens_per_s: ours, llama_cpp_tokens_per_s: llama, ratio: ours / llama }
}

fn ref_failed() -> Error {
    Error::invalid("bench", "llama.cpp could not create a context")
}

fn ref_decode(code: i32) -> Error {
    Error::invalid("bench", format!("llama.cpp decode failed with code {code}"))
}

pub fn describe_row(r: &LlmBenchRow) -> String {
    format!("{:<26} {:>10.2} {:>12.2} {:>7.3}", r.test, r.ours_tokens_per_s, r.llama_cpp_tokens_per_s, r.ratio)
}

pub fn table_header() -> String {
    format!("{:<26} {:>10} {:>12} {:>7}", "test (tokens/s)", "dycoke", "llama.cpp", "ratio")
}

pub mod video;

// ---- vision ------------------------------------------------------------------------------------

use dycoke::ggml::{Backend, BufferType, Context as GraphContext, Device, GgmlType, Scheduler};
use dycoke::VisionType;
use dycoke::gguf::names::vision::{BlockPart, Param, Tensor as VisionTensor};
use dycoke::vision::{Stage, VisionContext, VisionModel};
use dycoke::weights::Placement;

/// Settings of the vision benchmark.
#[derive(Clone, Debug)]
pub struct VisionBenchOptions {
    pub mmproj: PathBuf,
    pub threads: usize,
    /// Frames encoded per measurement.
    pub frames: usize,
    /// Frames per graph.
    pub batch: usize,
    pub reps: usize,
    /// With the `llama-mtmd` feature: a text model whose width the mmproj feeds, to measure the same
    /// encoder in llama.cpp's CLIP.
    pub llama_cpp_llm: Option<PathBuf>,
    /// The type the matrices are multiplied in.
    pub vision_type: VisionType,
    /// Repack matrices into the CPU's interleaved layouts where ggml has them.
    pub repack: bool,
}

/// The result of the vision benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct VisionBenchReport {
    pub file: String,
    /// The type the tower's matrices are multiplied in (after any conversion at load).
    pub weight_type: String,
    /// `--vision-type` and where the matrices went (`vision::layout::describe`).
    pub vision_type: String,
    pub layout: String,
    /// Seconds the load took (conversions at load included).
    pub load_s: f64,
    pub threads: usize,
    pub frames: usize,
    pub batch: usize,
    /// Seconds per frame through tower, projector and pooling.
    pub seconds_per_frame: f64,
    /// Floating-point operations per frame (matrix products and attention).
    pub gflop_per_frame: f64,
    /// Achieved GFLOP/s of the whole encoder.
    pub achieved_gflops: f64,
    /// GFLOP/s of the tower's matrix products alone (same shapes and types), on this machine.
    pub matmul_gflops: f64,
    /// achieved / matmul throughput.
    pub efficiency: f64,
    /// llama.cpp's CLIP on the same file (one 384x384 frame, one crop), when measured.
    pub llama_cpp_seconds_per_frame: Option<f64>,
}

/// FLOPs of one frame: every matrix product of the tower and projector, and attention.
pub fn vision_flops_per_frame(m: &VisionModel) -> f64 {
    let p = m.params();
    let t = &p.tower;
    let (n, h, f, d) = (t.n_patches() as f64, t.hidden as f64, t.ffn as f64, p.out_dim as f64);
    let per_block = 2.0 * n * (4.0 * h * h + 2.0 * h * f) + 2.0 * 2.0 * n * n * h;
    let patch = 2.0 * n * t.patch_values() as f64 * h;
    let projector = 2.0 * n * (h * d + d * d);
    t.n_layer as f64 * per_block + patch + projector
}

/// The name of a weight matrix of the tower's first block.
fn block0(part: BlockPart) -> String {
    VisionTensor::Block(0, part, Param::Weight).name()
}

/// Where the model put a matrix of the tower's first block: (type, buffer), F16 mapped if absent.
fn block0_placement(model: &VisionModel, part: BlockPart) -> (GgmlType, String) {
    let name = block0(part);
    model.weights().matrices.iter().find(|m| m.name == name).map_or((GgmlType::F16, "mapped".into()), |m| (m.ty, m.buffer.clone()))
}

/// Measures the throughput of the tower's matrix products alone: one block's six products over
/// `rows` patches, with weights of the types and in the (repacked or plain) buffers the model uses.
fn matmul_gflops(model: &VisionModel, hidden: usize, ffn: usize, rows: usize, threads: usize) -> Result<f64> {
    let mut g = GraphContext::new(64, 64);
    let mut weight_ctx: Vec<(BufferType, GraphContext)> = Vec::new();
    let shapes = [
        (BlockPart::AttnQ, hidden, hidden),
        (BlockPart::AttnK, hidden, hidden),
        (BlockPart::AttnV, hidden, hidden),
        (BlockPart::AttnOut, hidden, hidden),
        (BlockPart::FfnUp, hidden, ffn),
        (BlockPart::FfnDown, ffn, hidden),
    ];
    let mut weights = Vec::new();
    let mut outs = Vec::new();
    let x_h = g.input("x_hidden", GgmlType::F32, &[hidden as i64, rows as i64]);
    let x_f = g.input("x_ffn", GgmlType::F32, &[ffn as i64, rows as i64]);
    let mut flops = 0.0;
    let extra = Device::cpu().extra_buffer_types();
    for (part, k, m) in shapes {
        let (ty, buffer) = block0_placement(model, part);
        let buft = extra.iter().copied().find(|b| b.name() == buffer).unwrap_or_else(BufferType::cpu);
        let pos = match weight_ctx.iter().position(|(b, _)| *b == buft) {
            Some(p) => p,
            None => {
                weight_ctx.push((buft, GraphContext::new(8, 0)));
                weight_ctx.len() - 1
            }
        };
        let w = weight_ctx[pos].1.new_tensor(ty, &[k as i64, m as i64]);
        let x = if k == hidden { &x_h } else { &x_f };
        let y = g.mul_mat(&w, x);
        g.set_output(&y);
        flops += 2.0 * (k * m * rows) as f64;
        weights.push(w);
        outs.push(y);
    }
    let mut graph = g.new_graph(64);
    for y in &outs {
        graph.expand(y);
    }
    for (buft, ctx) in &weight_ctx {
        let buffer = buft.alloc_context_tensors(ctx).ok_or_else(|| Error::invalid("bench", "could not allocate the matrices"))?;
        buffer.mark_weights();
    }
    let mut sched = Scheduler::new(vec![Backend::cpu(threads)], 64);
    sched.alloc(&graph, &g)?;
    // Matrix-product speed does not depend on the values, but they must be finite: zeros.
    for w in &weights {
        w.write_bytes(&vec![0u8; w.n_bytes()]);
    }
    x_h.write_f32(&vec![0.5; hidden * rows]);
    x_f.write_f32(&vec![0.5; ffn * rows]);
    sched.compute(&graph)?; // warm-up
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        sched.compute(&graph)?;
    }
    Ok(flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// Encodes synthetic frames with a vision model and compares with the matrix products' throughput.
pub fn run_vision_bench(opts: &VisionBenchOptions) -> Result<VisionBenchReport> {
    if opts.frames == 0 || opts.reps == 0 || opts.batch == 0 {
        return Err(Error::invalid("bench", "frames, batch and repetitions must be at least 1"));
    }
    let start = Instant::now();
    let model = VisionModel::load_with(&opts.mmproj, Placement { repack: opts.repack, ..Placement::cpu() }, opts.vision_type)?;
    let load_s = start.elapsed().as_secs_f64();
    let p = model.params().clone();
    let size = p.tower.image_size;
    // Smooth synthetic frames (the values do not change the work).
    let pixels: Vec<f32> = (0..opts.frames * 3 * size * size).map(|i| ((i % 997) as f32 / 498.5) - 1.0).collect();
    let mut ctx = VisionContext::new(model.clone(), Device::cpu(), opts.threads, opts.batch)?;
    let per = 3 * size * size;
    let encode = |ctx: &mut VisionContext| -> Result<()> {
        for chunk in pixels.chunks(per * opts.batch) {
            ctx.run(Stage::Pixels, Stage::Pooled, chunk, chunk.len() / per)?;
        }
        Ok(())
    };
    encode(&mut ctx)?; // warm-up: graph sizes, page faults
    let mut times = Vec::new();
    for _ in 0..opts.reps {
        let t = Instant::now();
        encode(&mut ctx)?;
        times.push(t.elapsed().as_secs_f64() / opts.frames as f64);
    }
    drop(ctx);
    let seconds_per_frame = median(times);
    let gflop = vision_flops_per_frame(&model) / 1e9;
    let achieved = gflop / seconds_per_frame;
    let matmul = matmul_gflops(&model, p.tower.hidden, p.tower.ffn, p.tower.n_patches() * opts.batch, opts.threads)?;
    let llama_cpp_seconds_per_frame = match &opts.llama_cpp_llm {
        None => None,
        Some(llm) => Some(llama_cpp_clip_seconds(&opts.mmproj, llm, size as u32, opts.threads, opts.reps)?),
    };
    Ok(VisionBenchReport {
        file: opts.mmproj.display().to_string(),
        weight_type: block0_placement(&model, BlockPart::AttnQ).0.to_string(),
        vision_type: opts.vision_type.to_string(),
        layout: model.layout().to_string(),
        load_s,
        threads: opts.threads,
        frames: opts.frames,
        batch: opts.batch,
        seconds_per_frame,
        gflop_per_frame: gflop,
        achieved_gflops: achieved,
        matmul_gflops: matmul,
        efficiency: achieved / matmul,
        llama_cpp_seconds_per_frame,
    })
}

/// Seconds llama.cpp's CLIP takes for one frame of `size` x `size` pixels (median of `reps`).
#[cfg(feature = "llama-mtmd")]
fn llama_cpp_clip_seconds(mmproj: &std::path::Path, llm: &std::path::Path, size: u32, threads: usize, reps: usize) -> Result<f64> {
    use dycoke_oracle::RefClip;
    let model = RefModel::load(llm, false).ok_or_else(|| Error::invalid("bench", format!("llama.cpp could not load {}", llm.display())))?;
    let mut clip = RefClip::load(mmproj, &model, threads as i32)
        .ok_or_else(|| Error::invalid("bench", format!("llama.cpp's CLIP could not load {}", mmproj.display())))?;
    let rgb: Vec<u8> = (0..size * size * 3).map(|i| (i % 251) as u8).collect();
    clip.encode_seconds(&rgb, size, size).ok_or_else(|| Error::invalid("bench", "llama.cpp's CLIP failed to encode"))?;
    let mut times = Vec::new();
    for _ in 0..reps {
        times.push(clip.encode_seconds(&rgb, size, size).ok_or_else(|| Error::invalid("bench", "llama.cpp's CLIP failed to encode"))?.0);
    }
    Ok(median(times))
}

#[cfg(not(feature = "llama-mtmd"))]
fn llama_cpp_clip_seconds(_: &std::path::Path, _: &std::path::Path, _: u32, _: usize, _: usize) -> Result<f64> {
    Err(Error::invalid("bench", "this build has no llama.cpp CLIP: rebuild with --features llama-mtmd"))
}
