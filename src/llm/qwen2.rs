//! Qwen2, as llama.cpp's `qwen2` GGUF architecture stores it: RMSNorm, NeoX RoPE, grouped-query
//! attention with q/k/v biases, SwiGLU, tied or separate output. This module holds no compression
//! logic; the KV cache decides what each layer attends over.

use std::sync::Arc;

use crate::error::Result;
use crate::ggml::{Context, RopeParams, Tensor, ROPE_TYPE_NEOX};
use crate::gguf::names::{llm as keys, qwen2 as names};
use crate::ggml::GgmlType;
use crate::gguf::{GgufError, GgufFile, TensorInfo};
use crate::nn;
use crate::weights::{Placement, WeightLoader, WeightStore, WeightUse};

pub const ARCH: &str = "qwen2";

/// The model's shape and constants, read once from the file's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2Params {
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
}

impl Qwen2Params {
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Reads and validates the hyperparameters; errors name the key and the bad value.
    pub fn from_gguf(file: &GgufFile) -> Result<Qwen2Params> {
        let arch = file.require_str(crate::gguf::names::general::ARCHITECTURE)?;
        if arch != ARCH {
            return Err(file.error(GgufError::Architecture { found: arch.to_string(), expected: format!("{ARCH:?}") }));
        }
        let key = |s: &str| keys::key(ARCH, s);
        let bad = |k: &str, v: String, problem: &str| {
            file.error(GgufError::KeyValue { key: key(k), value: v, problem: problem.to_string() })
        };
        // Bounds far beyond any Qwen2 and far below sizes that would overflow ggml's arithmetic.
        let dim = |k: &str, max: usize| -> Result<usize> {
            let v: usize = file.require_int(&key(k))?;
            if v == 0 || v > max {
                return Err(bad(k, v.to_string(), &format!("it must be between 1 and {max}")));
            }
            Ok(v)
        };
        let n_embd = dim(keys::EMBEDDING_LENGTH, 1 << 16)?;
        let n_layer = dim(keys::BLOCK_COUNT, 1024)?;
        let n_ff = dim(keys::FEED_FORWARD_LENGTH, 1 << 20)?;
        let n_head = dim(keys::HEAD_COUNT, 1024)?;
        let n_head_kv = match file.get(&key(keys::HEAD_COUNT_KV)) {
            Some(_) => dim(keys::HEAD_COUNT_KV, 1024)?,
            None => n_head,
        };
        let n_ctx_train = dim(keys::CONTEXT_LENGTH, 1 << 24)?;
        if n_embd % n_head != 0 {
            return Err(bad(keys::HEAD_COUNT, n_head.to_string(), &format!("it must divide the embedding length {n_embd}")));
        }
        if n_head % n_head_kv != 0 {
            return Err(bad(keys::HEAD_COUNT_KV, n_head_kv.to_string(), &format!("it must divide the head count {n_head}")));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 {
            return Err(bad(keys::HEAD_COUNT, n_head.to_string(), &format!("the head size {head_dim} must be even for RoPE")));
        }
        if let Some(n_rot) = file.get_int::<i64>(&key(keys::ROPE_DIMENSION_COUNT))? {
            if n_rot != head_dim as i64 {
                return Err(bad(keys::ROPE_DIMENSION_COUNT, n_rot.to_string(), &format!("Qwen2 rotates whole heads of {head_dim}")));
            }
        }
        let rope_freq_base = file.get_float(&key(keys::ROPE_FREQ_BASE))?.unwrap_or(10000.0) as f32;
        if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
            return Err(bad(keys::ROPE_FREQ_BASE, rope_freq_base.to_string(), "it must be a positive number"));
        }
        let rms_eps = file.require_float(&key(keys::RMS_EPS))? as f32;
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(bad(keys::RMS_EPS, rms_eps.to_string(), "it must be between 0 and 1"));
        }
        let embd = file
            .tensor(names::TOKEN_EMBD)
            .ok_or_else(|| file.error::<crate::gguf::Error>(GgufError::MissingTensor { tensor: names::TOKEN_EMBD.into() }))?;
        if embd.shape.len() != 2 || embd.shape[0] != n_embd as u64 || embd.shape[1] == 0 || embd.shape[1] > 1 << 24 {
            return Err(file.error(GgufError::TensorShape {
                tensor: names::TOKEN_EMBD.into(),
                found: embd.shape.clone(),
                expected: vec![n_embd as u64, 0],
            }));
        }
        let n_vocab = embd.shape[1] as usize;
        Ok(Qwen2Params { n_vocab, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim, rope_freq_base, rms_eps })
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    bq: Tensor,
    bk: Tensor,
    bv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    ffn_gate: Tensor,
    ffn_up: Tensor,
    ffn_down: Tensor,
}

/// A loaded Qwen2: hyperparameters and weights. Shared (read-only) by every session.
pub struct Qwen2 {
    params: Qwen2Params,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Tensor,
    tied_output: bool,
    token_embd: TensorInfo,
    file: Arc<GgufFile>,
    store: WeightStore,
}

/// The inputs of one forward pass, set before each compute.
pub struct ForwardInputs {
    /// [n_embd, n_tokens] F32: token embeddings or spliced media embeddings.
    pub embd: Tensor,
    /// [n_tokens] I32 RoPE positions.
    pub pos: Tensor,
    /// [n_out] I32: the batch rows whose logits are wanted; None for every row.
    pub out_ids: Option<Tensor>,
}

/// Attention through the KV cache API: stores the batch's keys and values and attends over what
/// the cache decides (all entries, or a selection). The model never looks inside.
pub trait Attention {
    /// q: [head_dim, n_head, n_tokens] (after RoPE); k: [n_embd_kv, n_tokens] (after RoPE);
    /// v: [n_embd_kv, n_tokens]. Returns [head_dim * n_head, n_tokens].
    fn attend(&mut self, g: &mut Context, il: usize, q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Tensor;
}

impl Qwen2 {
    /// Loads weights with the shapes the hyperparameters imply (every tensor checked).
    pub fn load(file: Arc<GgufFile>, placement: Placement) -> Result<Qwen2> {
        let p = Qwen2Params::from_gguf(&file)?;
        let (e, kv, ff, v) = (p.n_embd as u64, p.n_embd_kv() as u64, p.n_ff as u64, p.n_vocab as u64);
        let token_embd = file.require_tensor(names::TOKEN_EMBD, &[e, v])?.clone();
        if !crate::ggml::can_dequantize(token_embd.ty) {
            return Err(file.error(GgufError::TensorType {
                tensor: names::TOKEN_EMBD.into(),
                found: token_embd.ty.to_string(),
                expected: "a float or quantized weight type".into(),
            }));
        }
        let mut w = WeightLoader::new(file.clone(), placement);
        let mut layers = Vec::with_capacity(p.n_layer);
        for i in 0..p.n_layer {
            let l = Some(i);
            layers.push(Layer {
                attn_norm: w.tensor(&names::attn_norm(i), &[e], WeightUse::Vector, l)?,
                wq: w.tensor(&names::attn_q(i), &[e, e], WeightUse::Matmul, l)?,
                wk: w.tensor(&names::attn_k(i), &[e, kv], WeightUse::Matmul, l)?,
                wv: w.tensor(&names::attn_v(i), &[e, kv], WeightUse::Matmul, l)?,
                bq: w.tensor(&names::attn_q_bias(i), &[e], WeightUse::Vector, l)?,
                bk: w.tensor(&names::attn_k_bias(i), &[kv], WeightUse::Vector, l)?,
                bv: w.tensor(&names::attn_v_bias(i), &[kv], WeightUse::Vector, l)?,
                wo: w.tensor(&names::attn_output(i), &[e, e], WeightUse::Matmul, l)?,
                ffn_norm: w.tensor(&names::ffn_norm(i), &[e], WeightUse::Vector, l)?,
                ffn_gate: w.tensor(&names::ffn_gate(i), &[e, ff], WeightUse::Matmul, l)?,
                ffn_up: w.tensor(&names::ffn_up(i), &[e, ff], WeightUse::Matmul, l)?,
                ffn_down: w.tensor(&names::ffn_down(i), &[ff, e], WeightUse::Matmul, l)?,
            });
        }
        let output_norm = w.tensor(names::OUTPUT_NORM, &[e], WeightUse::Vector, None)?;
        // Without an output matrix the embedding matrix is tied to it (Qwen2-0.5B).
        let (output, tied_output) = match w.optional(names::OUTPUT, &[e, v], WeightUse::Matmul, None)? {
            Some(t) => (t, false),
            None => (w.tensor(names::TOKEN_EMBD, &[e, v], WeightUse::Matmul, None)?, true),
        };
        let store = w.finish()?;
        Ok(Qwen2 { params: p, layers, output_norm, output, tied_output, token_embd, file, store })
    }

    pub fn params(&self) -> &Qwen2Params {
        &self.params
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    pub fn weights(&self) -> &WeightStore {
        &self.store
    }

    pub fn tied_output(&self) -> bool {
        self.tied_output
    }

    /// Nodes in the largest graph this model builds (with room for observers).
    pub fn max_graph_nodes(&self) -> usize {
        (self.params.n_layer * 64 + 512).max(2048)
    }

    /// Writes the embedding rows of `tokens` into `out` ([n_embd] per token), dequantized on the
    /// host with ggml's own conversion (the same one its get_rows uses). Ids are checked by callers.
    pub fn embed_tokens(&self, tokens: &[u32], out: &mut [f32]) {
        let n = self.params.n_embd;
        assert_eq!(out.len(), tokens.len() * n);
        let data = self.file.tensor_data(&self.token_embd);
        let row = self.token_embd.ty.row_bytes(n as u64).expect("validated row") as usize;
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            assert!(t < self.params.n_vocab, "token id {t} outside the vocabulary");
            crate::ggml::dequantize(self.token_embd.ty, &data[t * row..(t + 1) * row], &mut out[i * n..(i + 1) * n]);
        }
    }

    /// Builds the forward pass over a batch of `n_tokens`, returning the logits [n_vocab, n_out].
    pub fn build(&self, g: &mut Context, inp: &ForwardInputs, attn: &mut dyn Attention) -> Tensor {
        let p = &self.params;
        let n_tokens = inp.embd.ne()[1];
        let rope = RopeParams {
            n_dims: p.head_dim as i32,
            mode: ROPE_TYPE_NEOX,
            n_ctx_orig: p.n_ctx_train as i32,
            freq_base: p.rope_freq_base,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
        };
        let scale = 1.0 / (p.head_dim as f32).sqrt();
        let mut x = inp.embd.clone();
        for (il, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let cur = nn::rms_norm(g, &x, &layer.attn_norm, p.rms_eps);
            nn::name_layer(g, &cur, "attn_norm", il);

            let q = nn::linear(g, &cur, &layer.wq, Some(&layer.bq));
            let k = nn::linear(g, &cur, &layer.wk, Some(&layer.bk));
            let v = nn::linear(g, &cur, &layer.wv, Some(&layer.bv));
            nn::name_layer(g, &v, "Vcur", il);
            let q = g.reshape(&q, &[p.head_dim as i64, p.n_head as i64, n_tokens]);
            let k = g.reshape(&k, &[p.head_dim as i64, p.n_head_kv as i64, n_tokens]);
            let q = g.rope_ext(&q, &inp.pos, &rope);
            let k = g.rope_ext(&k, &inp.pos, &rope);
            nn::name_layer(g, &q, "Qcur", il);
            nn::name_layer(g, &k, "Kcur", il);

            let k = g.reshape(&k, &[p.n_embd_kv() as i64, n_tokens]);
            let a = attn.attend(g, il, &q, &k, &v, scale);
            nn::name_layer(g, &a, "kqv_out", il);
            let mut cur = g.mul_mat(&layer.wo, &a);
            nn::name_layer(g, &cur, "attn_out", il);

            let mut residual = residual;
            if let (true, Some(ids)) = (il == p.n_layer - 1, &inp.out_ids) {
                // Only the requested rows go through the last FFN and the output head.
                cur = g.get_rows(&cur, ids);
                residual = g.get_rows(&residual, ids);
            }
            let ffn_in = g.add(&cur, &residual);
            nn::name_layer(g, &ffn_in, "ffn_inp", il);
            let h = nn::rms_norm(g, &ffn_in, &layer.ffn_norm, p.rms_eps);
            nn::name_layer(g, &h, "ffn_norm", il);
            let h = nn::swiglu_ffn(g, &h, &layer.ffn_gate, &layer.ffn_up, &layer.ffn_down);
            nn::name_layer(g, &h, "ffn_out", il);
            x = g.add(&h, &ffn_in);
            nn::name_layer(g, &x, "l_out", il);
        }
        let x = nn::rms_norm(g, &x, &self.output_norm, p.rms_eps);
        g.set_name(&x, "result_norm");
        g.mul_mat(&self.output, &x)
    }

    /// The type of the embedding matrix (for diagnostics).
    pub fn embedding_type(&self) -> GgmlType {
        self.token_embd.ty
    }
}
