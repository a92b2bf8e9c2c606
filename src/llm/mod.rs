//! The language model at run time: a loaded Qwen2 (shared) and per-session contexts that own a
//! KV cache, a scheduler and the reusable decode graph.

pub mod chunks;
pub mod kv_cache;
pub mod qwen2;

use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;

use crate::error::{Error, Result, Setting};
use crate::ggml::{Context, Device, GgmlType, Graph, Scheduler, Tensor};
use crate::nn;
use kv_cache::{KvCache, KvShape, KvType, StoredLayer};
use qwen2::{Attention, ForwardInputs, Qwen2};

/// Settings of one LLM context.
#[derive(Clone, Debug)]
pub struct LlmOptions {
    /// Positions the KV cache holds.
    pub n_ctx: usize,
    /// Tokens per prefill chunk (ubatch).
    pub n_batch: usize,
    /// CPU threads.
    pub n_threads: usize,
    pub kv_type: KvType,
    /// Where to compute (the weights' device when offloaded; CPU otherwise). The KV cache lives here.
    pub device: Device,
    /// More devices holding layers (`Placement::split`): their backends join the scheduler.
    pub split: Vec<Device>,
}

impl LlmOptions {
    pub fn new(n_ctx: usize, n_threads: usize) -> LlmOptions {
        LlmOptions { n_ctx, n_batch: 512, n_threads, kv_type: KvType::F16, device: Device::cpu(), split: Vec::new() }
    }
}

/// A run of input: token ids, or precomputed embedding rows (n_embd values each) such as video
/// features, spliced into the sequence at the next positions.
#[derive(Clone, Copy, Debug)]
pub enum Segment<'a> {
    Tokens(&'a [u32]),
    Embeddings(&'a [f32]),
}

/// Time spent and work done, since the context was created or `reset_timings` was called.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prefill: Duration,
    pub prefill_tokens: usize,
    pub decode: Duration,
    pub decode_tokens: usize,
    /// Bytes moved between devices (host memory and the devices' own), prompt steps and
    /// single-token steps apart: the scheduler's copies between backends, inputs written to and
    /// logits read from device memory. 0 when everything is in host memory (the CPU alone).
    pub prefill_transfer_bytes: u64,
    pub decode_transfer_bytes: u64,
}

impl Timings {
    /// Mean bytes moved between devices per decode step.
    pub fn transfer_bytes_per_decode_step(&self) -> f64 {
        self.decode_transfer_bytes as f64 / self.decode_tokens.max(1) as f64
    }
}

/// A graph for a batch shape, with its inputs.
struct StepGraph {
    ctx: Context,
    graph: Graph,
    inputs: ForwardInputs,
    kv_idx: Tensor,
    mask: Tensor,
    logits: Tensor,
    n_kv: usize,
    n_out: usize,
    /// The decode attention's key, for graphs built with one.
    decode_key: Option<u64>,
    id: u64,
}

/// The plain attention path: store the batch, attend over the first `n_kv` cache entries.
pub struct FullAttention<'a> {
    pub cache: &'a KvCache,
    /// I64 [n_tokens]: the cache positions the batch's rows go to.
    pub kv_idx: &'a Tensor,
    /// F16 [n_kv, n_tokens]: the causal mask over the attended entries.
    pub mask: &'a Tensor,
    pub n_kv: usize,
}

impl Attention for FullAttention<'_> {
    fn attend(&mut self, g: &mut Context, il: usize, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Tensor {
        let stored: StoredLayer = self.cache.store(g, il, k, v, self.kv_idx);
        let (kc, vc) = self.cache.view(g, &stored, self.n_kv);
        nn::flash_attention(g, q, &kc, &vc, Some(self.mask), scale)
    }
}

/// A different attention for single-token decode steps, chosen by a compression method (DyCoke's
/// dynamic pruning is one). Prefill always uses [`FullAttention`].
pub trait DecodeAttention: Send + Sync {
    /// Called before each decode step with the positions the cache will hold (the new token
    /// included). Returns a graph key: a step whose key (and cache length) equals the previous
    /// step's reuses its graph.
    fn prepare(&self, n_positions: usize) -> u64;

    /// The attention of a decode graph, built on the plain path's inputs.
    fn attention<'a>(&'a self, full: FullAttention<'a>) -> Box<dyn Attention + 'a>;
}

/// The one check of a thread count (the LLM's and the vision tower's).
pub fn check_threads(n: usize) -> Result<()> {
    if n == 0 || n > 512 {
        return Err(Error::setting(Setting::Threads, format!("{n} is outside 1..=512")));
    }
    Ok(())
}

/// One sequence's state: the KV cache and the machinery to extend it.
pub struct LlmContext {
    model: Arc<Qwen2>,
    cache: KvCache,
    sched: Scheduler,
    decode_graph: Option<StepGraph>,
    /// Id of the graph whose tensors the scheduler currently holds.
    allocated: Option<u64>,
    next_graph_id: u64,
    n_batch: usize,
    logits: Vec<f32>,
    n_logits_rows: usize,
    timings: Timings,
    decode_attention: Option<Arc<dyn DecodeAttention>>,
}

impl LlmContext {
    pub fn new(model: Arc<Qwen2>, opts: &LlmOptions) -> Result<LlmContext> {
        let p = model.params().clone();
        if opts.n_ctx == 0 || opts.n_ctx > p.n_ctx_train {
            return Err(Error::setting(Setting::ContextSize, format!("{} is outside 1..={} (the model's training context)", opts.n_ctx, p.n_ctx_train)));
        }
        if opts.n_batch == 0 || opts.n_batch > 8192 {
            return Err(Error::setting(Setting::BatchSize, format!("{} is outside 1..=8192", opts.n_batch)));
        }
        check_threads(opts.n_threads)?;
        let devices = [&[opts.device][..], &opts.split].concat();
        let sched = Scheduler::for_devices(&devices, opts.n_threads, model.max_graph_nodes())?;
        let buft = opts.device.buffer_type();
        let shape = KvShape { n_layer: p.n_layer, n_head_kv: p.n_head_kv, head_dim: p.head_dim };
        let cache = KvCache::new(shape, opts.n_ctx, opts.kv_type, buft)?;
        let mut ctx = LlmContext {
            model,
            cache,
            sched,
            decode_graph: None,
            allocated: None,
            next_graph_id: 0,
            n_batch: opts.n_batch.min(opts.n_ctx),
            logits: Vec::new(),
            n_logits_rows: 0,
            timings: Timings::default(),
            decode_attention: None,
        };
        ctx.reserve()?;
        Ok(ctx)
    }

    /// Sizes the compute buffers for the largest batch at a full cache, so that no later step
    /// allocates (and so that running out of memory shows up now, not mid-answer).
    fn reserve(&mut self) -> Result<()> {
        let worst = self.build_step(self.n_batch, self.cache.n_ctx(), 1, None)?;
        self.sched.reserve(&worst.graph)?;
        Ok(())
    }

    pub fn model(&self) -> &Arc<Qwen2> {
        &self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Positions filled so far.
    pub fn n_past(&self) -> usize {
        self.cache.n_used()
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    pub fn reset_timings(&mut self) {
        self.timings = Timings::default();
    }

    /// Bytes of compute buffers held by the scheduler.
    pub fn compute_buffer_bytes(&self) -> usize {
        (0..self.sched.backends().len()).map(|i| self.sched.buffer_size(i)).sum()
    }

    /// Sets (or, with None, removes) the attention of single-token decode steps.
    pub fn set_decode_attention(&mut self, attention: Option<Arc<dyn DecodeAttention>>) {
        self.decode_attention = attention;
        // The kept decode graph was built for the previous attention.
        self.decode_graph = None;
    }

    /// Names and shapes of the kept decode graph's nodes whose names start with `prefix` (empty
    /// before the first decode step): shows what a decode attention built.
    pub fn decode_graph_nodes(&self, prefix: &str) -> Vec<(String, [i64; 4])> {
        self.decode_graph.as_ref().map(|g| g.graph.named_nodes(prefix)).unwrap_or_default()
    }

    /// Forgets positions from `n` on (for example to start a new conversation).
    pub fn truncate(&mut self, n: usize) {
        self.cache.truncate(n);
    }

    /// The logits of the last evaluated position ([n_vocab]).
    pub fn logits(&self) -> &[f32] {
        let n = self.model.params().n_vocab;
        &self.logits[self.logits.len() - n..]
    }

    /// Logits of every row requested with `eval_all_logits` ([rows][n_vocab]).
    pub fn logits_rows(&self) -> impl Iterator<Item = &[f32]> {
        self.logits.chunks(self.model.params().n_vocab).take(self.n_logits_rows)
    }

    fn check_segments(&self, segments: &[Segment]) -> Result<usize> {
        let p = self.model.params();
        let mut total = 0usize;
        for s in segments {
            match *s {
                Segment::Tokens(t) => {
                    if let Some(&bad) = t.iter().find(|&&t| t as usize >= p.n_vocab) {
                        return Err(Error::invalid("token", format!("id {bad} is outside the vocabulary of {}", p.n_vocab)));
                    }
                    total += t.len();
                }
                Segment::Embeddings(e) => {
                    if e.len() % p.n_embd != 0 {
                        return Err(Error::invalid(
                            "embeddings",
                            format!("{} values is not a whole number of rows of {}", e.len(), p.n_embd),
                        ));
                    }
                    if e.iter().any(|x| !x.is_finite()) {
                        return Err(Error::invalid("embeddings", "they contain NaN or infinite values"));
                    }
                    total += e.len() / p.n_embd;
                }
            }
        }
        let needed = self.n_past() + total;
        if needed > self.n_ctx() {
            return Err(Error::ContextOverflow { needed, available: self.n_ctx(), trained: p.n_ctx_train });
        }
        Ok(total)
    }

    /// Appends the segments to the sequence and computes the logits of its last position.
    pub fn eval(&mut self, segments: &[Segment]) -> Result<&[f32]> {
        self.eval_impl(segments, false, &mut |_, _| true)?;
        Ok(self.logits())
    }

    /// As `eval`, with the logits of every appended position (rows in order).
    pub fn eval_all_logits(&mut self, segments: &[Segment]) -> Result<()> {
        self.eval_impl(segments, true, &mut |_, _| true)
    }

    /// As `eval`, calling `progress(done, total)` after each chunk.
    /// As `eval`, reporting `(done, total)` rows after each chunk; when `progress` returns false the
    /// evaluation stops after that chunk with `Error::Cancelled` (the cache then holds the chunks
    /// done, which the caller truncates).
    pub fn eval_with_progress(&mut self, segments: &[Segment], progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<&[f32]> {
        self.eval_impl(segments, false, progress)?;
        Ok(self.logits())
    }

    /// The chunk lengths a prefill of `n` positions runs in (see [`chunks::plan`]); a caller that
    /// must reproduce this context's numerics elsewhere feeds the same chunks.
    pub fn chunk_plan(&self, n: usize) -> Vec<usize> {
        chunks::plan(n, self.n_batch, chunks::FLASH_ATTN_Q_TILE)
    }

    fn eval_impl(&mut self, segments: &[Segment], all_logits: bool, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<()> {
        let total = self.check_segments(segments)?;
        if total == 0 {
            return Err(Error::invalid("input", "nothing to evaluate"));
        }
        let n_embd = self.model.params().n_embd;
        // Flatten into one embedding matrix, a chunk at a time.
        let mut rows: Vec<(usize, usize)> = Vec::new(); // (segment, row within it)
        for (si, s) in segments.iter().enumerate() {
            let n = match s {
                Segment::Tokens(t) => t.len(),
                Segment::Embeddings(e) => e.len() / n_embd,
            };
            rows.extend((0..n).map(|r| (si, r)));
        }
        if all_logits {
            self.logits.clear();
            self.n_logits_rows = 0;
        }
        let start = Instant::now();
        let mut done = 0;
        let mut moved = 0;
        let mut embd = Vec::new();
        for len in self.chunk_plan(total) {
            let chunk = &rows[done..done + len];
            embd.resize(chunk.len() * n_embd, 0.0);
            for (i, &(si, r)) in chunk.iter().enumerate() {
                let out = &mut embd[i * n_embd..(i + 1) * n_embd];
                match segments[si] {
                    Segment::Tokens(t) => self.model.embed_tokens(&t[r..r + 1], out),
                    Segment::Embeddings(e) => out.copy_from_slice(&e[r * n_embd..(r + 1) * n_embd]),
                }
            }
            let is_last = done + chunk.len() == total;
            let n_out = if all_logits { chunk.len() } else { usize::from(is_last) };
            moved += self.run_batch(&embd, chunk.len(), n_out.max(1), all_logits)?;
            done += chunk.len();
            if !progress(done, total) && done < total {
                return Err(Error::Cancelled);
            }
        }
        let elapsed = start.elapsed();
        if total == 1 {
            self.timings.decode += elapsed;
            self.timings.decode_tokens += 1;
            self.timings.decode_transfer_bytes += moved;
        } else {
            self.timings.prefill += elapsed;
            self.timings.prefill_tokens += total;
            self.timings.prefill_transfer_bytes += moved;
        }
        Ok(())
    }

    /// One forward pass over `n` rows of embeddings at the next positions; keeps the logits of the
    /// last `n_out` rows (all rows when `n_out == n`). Returns the bytes it moved between devices.
    fn run_batch(&mut self, embd: &[f32], n: usize, n_out: usize, append_logits: bool) -> Result<u64> {
        let p0 = self.n_past();
        let n_kv = self.cache.padded_len(p0 + n);
        let decode = if n == 1 { self.decode_attention.clone() } else { None };
        let decode_key = decode.as_ref().map(|d| d.prepare(p0 + 1));
        let cached = if n == 1 { self.decode_graph.take() } else { None };
        let step = match cached {
            Some(g) if g.n_kv == n_kv && g.n_out == n_out && g.decode_key == decode_key => g,
            _ => StepGraph { decode_key, ..self.build_step(n, n_kv, n_out, decode.as_deref())? },
        };
        if self.allocated != Some(step.id) {
            self.sched.alloc(&step.graph, &step.ctx)?;
            self.allocated = Some(step.id);
        }
        let mut moved = self.set_inputs(&step, embd, p0, n, n_out) + self.sched.copy_bytes();
        self.sched.compute(&step.graph)?;

        let n_vocab = self.model.params().n_vocab;
        let read = if !append_logits {
            self.logits.resize(n_vocab, 0.0);
            let rows = step.logits.ne()[1] as usize;
            step.logits.read_f32_range((rows - 1) * n_vocab, &mut self.logits);
            self.n_logits_rows = 1;
            n_vocab
        } else {
            let old = self.logits.len();
            self.logits.resize(old + n_out * n_vocab, 0.0);
            step.logits.read_f32_into(&mut self.logits[old..]);
            self.n_logits_rows += n_out;
            n_out * n_vocab
        };
        if !step.logits.in_host_memory() {
            moved += read * std::mem::size_of::<f32>();
        }
        self.cache.set_used(p0 + n);
        if n == 1 {
            // Single-token graphs are kept: the next step usually has the same shape.
            self.decode_graph = Some(step);
        }
        Ok(moved as u64)
    }

    fn build_step(&mut self, n_tokens: usize, n_kv: usize, n_out: usize, decode: Option<&dyn DecodeAttention>) -> Result<StepGraph> {
        let p = self.model.params();
        let nodes = self.model.max_graph_nodes();
        let mut g = Context::new(nodes * 2, nodes);
        let embd = g.input("inp_embd", GgmlType::F32, &[p.n_embd as i64, n_tokens as i64]);
        let pos = g.input("inp_pos", GgmlType::I32, &[n_tokens as i64]);
        let kv_idx = g.input("inp_kv_idx", GgmlType::I64, &[n_tokens as i64]);
        let mask = g.input("inp_kq_mask", GgmlType::F16, &[n_kv as i64, n_tokens as i64]);
        let out_ids = if n_out < n_tokens { Some(g.input("inp_out_ids", GgmlType::I32, &[n_out as i64])) } else { None };
        let inputs = ForwardInputs { embd, pos, out_ids };
        let full = FullAttention { cache: &self.cache, kv_idx: &kv_idx, mask: &mask, n_kv };
        let logits = match decode {
            Some(d) => self.model.build(&mut g, &inputs, &mut *d.attention(full)),
            None => self.model.build(&mut g, &inputs, &mut { full }),
        };
        g.set_name(&logits, "result_output");
        g.set_output(&logits);
        let mut graph = g.new_graph(nodes);
        graph.expand(&logits);
        self.next_graph_id += 1;
        Ok(StepGraph { ctx: g, graph, inputs, kv_idx, mask, logits, n_kv, n_out, decode_key: None, id: self.next_graph_id })
    }

    /// Writes the step's inputs; returns the bytes that went to device memory.
    fn set_inputs(&self, step: &StepGraph, embd: &[f32], p0: usize, n: usize, n_out: usize) -> usize {
        step.inputs.embd.write_f32(embd);
        let pos: Vec<i32> = (p0..p0 + n).map(|x| x as i32).collect();
        step.inputs.pos.write_i32(&pos);
        let idx: Vec<i64> = (p0..p0 + n).map(|x| x as i64).collect();
        step.kv_idx.write_i64(&idx);
        if let Some(ids) = &step.inputs.out_ids {
            let rows: Vec<i32> = ((n - n_out)..n).map(|x| x as i32).collect();
            ids.write_i32(&rows);
        }
        // Causal mask: row i (position p0+i) sees cache positions 0..=p0+i; padding is hidden.
        let n_kv = step.n_kv;
        let mut mask = vec![f16::NEG_INFINITY; n_kv * n];
        for i in 0..n {
            let visible = (p0 + i + 1).min(n_kv);
            mask[i * n_kv..i * n_kv + visible].fill(f16::ZERO);
        }
        step.mask.write_f16(&mask);
        let mut inputs = vec![&step.inputs.embd, &step.inputs.pos, &step.kv_idx, &step.mask];
        inputs.extend(&step.inputs.out_ids);
        inputs.iter().filter(|t| !t.in_host_memory()).map(|t| t.n_bytes()).sum()
    }
}
