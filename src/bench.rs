//! Benchmarks that compare this engine with a baseline in the same run, reported as ratios.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ggml::reference::{RefContext, RefModel};
use crate::llm::{LlmContext, LlmOptions, Segment};
use crate::model::{Model, ModelOptions};

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

/// Seconds as a short human string.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
