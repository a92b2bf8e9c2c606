//! Random-weight models in llama.cpp's layout, for tests and benchmarks.

use std::path::Path;

use dycoke::gguf::names::{general, llm as keys, qwen2 as names};
use dycoke::ggml::GgmlType;
use dycoke::gguf::GgufWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::quantize::{encode_f32, storage_type};
use crate::vocab::Vocab;

/// The shape and storage of a random Qwen2.
#[derive(Clone, Debug)]
pub struct Qwen2Spec {
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    pub rope_freq_base: f32,
    /// No separate output matrix: the embedding matrix is reused (as Qwen2-0.5B).
    pub tied: bool,
    /// Type of the weight matrices (norms and biases stay F32).
    pub weight_type: GgmlType,
    pub seed: u64,
}

impl Default for Qwen2Spec {
    /// Small enough for tests, with every dimension a multiple of 256 so that K-quants apply.
    fn default() -> Qwen2Spec {
        Qwen2Spec {
            n_embd: 256,
            n_layer: 4,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 512,
            n_ctx: 4096,
            rope_freq_base: 1_000_000.0,
            tied: false,
            weight_type: GgmlType::F32,
            seed: 42,
        }
    }
}

/// llama.cpp's `general.file_type` for a dominant weight type (informational).
pub fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 12,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::Iq4Nl => 25,
        GgmlType::Bf16 => 32,
        _ => 0,
    }
}

/// Normal(0, std) values from a stream seeded by the model seed and the tensor's name, so a
/// tensor's values do not depend on which other tensors exist.
pub fn normal_values(seed: u64, name: &str, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    let dist = Normal::new(mean, std).expect("finite std");
    (0..n).map(|_| dist.sample(&mut rng)).collect()
}

struct Planned {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    mean: f32,
    std: f32,
}

/// Writes a random Qwen2 GGUF. Weights are scaled so that activations stay of order one and the
/// next-token distribution is peaked (greedy decoding is then well defined).
pub fn write_qwen2(path: &Path, spec: &Qwen2Spec, vocab: &Vocab) -> Result<(), String> {
    let s = spec;
    if s.n_embd % s.n_head != 0 || s.n_head % s.n_head_kv != 0 || (s.n_embd / s.n_head) % 2 != 0 {
        return Err(format!("inconsistent heads: n_embd {} n_head {} n_head_kv {}", s.n_embd, s.n_head, s.n_head_kv));
    }
    let (e, kv, ff, v) = (s.n_embd as u64, (s.n_embd / s.n_head * s.n_head_kv) as u64, s.n_ff as u64, vocab.len() as u64);
    let wstd = |fan_in: u64| 1.0 / (fan_in as f32).sqrt();
    let mut plan = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, mean: f32, std: f32| {
        let ty = storage_type(&name, &shape, s.weight_type);
        plan.push(Planned { name, shape, ty, mean, std });
    };
    add(names::TOKEN_EMBD.into(), vec![e, v], 0.0, 1.0);
    for i in 0..s.n_layer {
        add(names::attn_norm(i), vec![e], 1.0, 0.1);
        add(names::attn_q(i), vec![e, e], 0.0, wstd(e));
        add(names::attn_k(i), vec![e, kv], 0.0, wstd(e));
        add(names::attn_v(i), vec![e, kv], 0.0, wstd(e));
        add(names::attn_q_bias(i), vec![e], 0.0, 0.1);
        add(names::attn_k_bias(i), vec![kv], 0.0, 0.1);
        add(names::attn_v_bias(i), vec![kv], 0.0, 0.1);
        add(names::attn_output(i), vec![e, e], 0.0, wstd(e));
        add(names::ffn_norm(i), vec![e], 1.0, 0.1);
        add(names::ffn_gate(i), vec![e, ff], 0.0, wstd(e));
        add(names::ffn_up(i), vec![e, ff], 0.0, wstd(e));
        add(names::ffn_down(i), vec![ff, e], 0.0, wstd(ff));
    }
    add(names::OUTPUT_NORM.into(), vec![e], 1.0, 0.1);
    if !s.tied {
        // Larger than 1/sqrt(n): logits with a spread of several units give a peaked distribution.
        add(names::OUTPUT.into(), vec![e, v], 0.0, 4.0 * wstd(e));
    }

    let mut w = GgufWriter::new();
    w.set_str(general::ARCHITECTURE, "qwen2");
    w.set_str(general::NAME, &format!("random qwen2 {}x{} {}", s.n_layer, s.n_embd, s.weight_type));
    w.set_u32(general::FILE_TYPE, file_type(s.weight_type));
    w.set_u32(general::QUANTIZATION_VERSION, 2);
    let k = |suffix: &str| keys::key("qwen2", suffix);
    w.set_u32(&k(keys::CONTEXT_LENGTH), s.n_ctx as u32);
    w.set_u32(&k(keys::EMBEDDING_LENGTH), s.n_embd as u32);
    w.set_u32(&k(keys::BLOCK_COUNT), s.n_layer as u32);
    w.set_u32(&k(keys::FEED_FORWARD_LENGTH), s.n_ff as u32);
    w.set_u32(&k(keys::HEAD_COUNT), s.n_head as u32);
    w.set_u32(&k(keys::HEAD_COUNT_KV), s.n_head_kv as u32);
    w.set_f32(&k(keys::ROPE_FREQ_BASE), s.rope_freq_base);
    w.set_f32(&k(keys::RMS_EPS), 1e-6);
    vocab.write(&mut w);
    for p in &plan {
        w.add_tensor(&p.name, p.ty, &p.shape).map_err(|e| e.to_string())?;
    }
    let mut out = w.create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in &plan {
        let n: u64 = p.shape.iter().product();
        let values = normal_values(s.seed, &p.name, n as usize, p.mean, p.std);
        let bytes = encode_f32(&values, p.shape[0] as usize, p.ty);
        out.write_tensor(&p.name, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.finish().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// A uniformly random token sequence of the vocabulary's ordinary tokens (for benchmarks).
pub fn random_tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..n_vocab as u32)).collect()
}

/// The shape and storage of a random vision model (mmproj).
#[derive(Clone, Debug)]
pub struct MmprojSpec {
    pub image_size: u32,
    pub patch_size: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub blocks: u32,
    pub heads: u32,
    /// The language model's width (896 for LLaVA-OneVision-0.5B).
    pub out_dim: u32,
    pub weight_type: GgmlType,
    pub seed: u64,
}

impl Default for MmprojSpec {
    /// SigLIP-so400m at 384 pixels, truncated to 26 blocks, with the 0.5B model's projector.
    fn default() -> MmprojSpec {
        MmprojSpec { image_size: 384, patch_size: 14, hidden: 1152, ffn: 4304, blocks: 26, heads: 16, out_dim: 896, weight_type: GgmlType::F16, seed: 42 }
    }
}

/// Writes a random-weight mmproj with the layout `gguf-tools convert` writes.
pub fn write_mmproj(path: &Path, spec: &MmprojSpec) -> Result<(), String> {
    use crate::convert::{vision_storage_type, write_clip_metadata, ClipMeta};
    let s = spec;
    if s.hidden % s.heads != 0 || s.patch_size == 0 || s.patch_size > s.image_size {
        return Err(format!("inconsistent vision shape: hidden {} heads {} patch {} image {}", s.hidden, s.heads, s.patch_size, s.image_size));
    }
    let (h, ff, d, p) = (u64::from(s.hidden), u64::from(s.ffn), u64::from(s.out_dim), u64::from(s.patch_size));
    let grid = u64::from(s.image_size / s.patch_size);
    let wstd = |fan_in: u64| 1.0 / (fan_in as f32).sqrt();
    let mut plan: Vec<Planned> = Vec::new();
    let mut add = |name: String, shape: Vec<u64>, mean: f32, std: f32| {
        let ty = vision_storage_type(&name, &shape, s.weight_type);
        plan.push(Planned { name, shape, ty, mean, std });
    };
    add("v.patch_embd.weight".into(), vec![p, p, 3, h], 0.0, wstd(3 * p * p));
    add("v.patch_embd.bias".into(), vec![h], 0.0, 0.02);
    add("v.position_embd.weight".into(), vec![h, grid * grid], 0.0, 0.1);
    for i in 0..s.blocks {
        let b = |part: &str| format!("v.blk.{i}.{part}");
        add(b("ln1.weight"), vec![h], 1.0, 0.1);
        add(b("ln1.bias"), vec![h], 0.0, 0.02);
        for m in ["attn_q", "attn_k", "attn_v", "attn_out"] {
            add(b(&format!("{m}.weight")), vec![h, h], 0.0, wstd(h));
            add(b(&format!("{m}.bias")), vec![h], 0.0, 0.02);
        }
        add(b("ln2.weight"), vec![h], 1.0, 0.1);
        add(b("ln2.bias"), vec![h], 0.0, 0.02);
        add(b("ffn_up.weight"), vec![h, ff], 0.0, wstd(h));
        add(b("ffn_up.bias"), vec![ff], 0.0, 0.02);
        add(b("ffn_down.weight"), vec![ff, h], 0.0, wstd(ff));
        add(b("ffn_down.bias"), vec![h], 0.0, 0.02);
    }
    add("mm.0.weight".into(), vec![h, d], 0.0, wstd(h));
    add("mm.0.bias".into(), vec![d], 0.0, 0.02);
    add("mm.2.weight".into(), vec![d, d], 0.0, wstd(d));
    add("mm.2.bias".into(), vec![d], 0.0, 0.02);
    add("model.image_newline".into(), vec![d], 0.0, 1.0);

    let mut w = GgufWriter::new();
    write_clip_metadata(
        &mut w,
        &ClipMeta {
            image_size: s.image_size,
            patch_size: s.patch_size,
            hidden: s.hidden,
            ffn: s.ffn,
            blocks: s.blocks,
            heads: s.heads,
            eps: 1e-6,
            mean: [0.5; 3],
            std: [0.5; 3],
            out_dim: s.out_dim,
            feature_layer: s.blocks as i32,
            pinpoints: Vec::new(),
            aspect_ratio: "anyres_max_9".into(),
        },
    );
    w.set_str(general::NAME, &format!("random SigLIP {}x{} {}", s.blocks, s.hidden, s.weight_type));
    for t in &plan {
        w.add_tensor(&t.name, t.ty, &t.shape).map_err(|e| e.to_string())?;
    }
    let mut out = w.create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for t in &plan {
        let n: u64 = t.shape.iter().product();
        let values = normal_values(s.seed, &t.name, n as usize, t.mean, t.std);
        out.write_tensor(&t.name, &encode_f32(&values, t.shape[0] as usize, t.ty)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.finish().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
