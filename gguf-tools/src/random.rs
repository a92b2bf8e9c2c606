//! Random-weight models in llama.cpp's layout, for tests and benchmarks.

use std::path::Path;

use dycoke::ggml::GgmlType;
use dycoke::gguf::names::general;
use dycoke::gguf::names::vision::{BlockPart, Param, Tensor as VisionTensor};
use dycoke::gguf::GgufWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::codec::encode_f32;
use crate::layout::{self, ClipMeta, LlmRole, Qwen2Meta};
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

/// 1/sqrt(fan in) for a matrix whose rows are the first dimensions of `shape` (ggml order).
fn fan_in_std(shape: &[u64]) -> f32 {
    let fan_in: u64 = shape[..shape.len().saturating_sub(1)].iter().product();
    1.0 / (fan_in as f32).sqrt()
}

/// Writes the planned tensors' random values after the head `w`.
fn write_planned(path: &Path, w: GgufWriter, plan: &[Planned], seed: u64) -> Result<(), String> {
    let mut w = w;
    for p in plan {
        w.add_tensor(&p.name, p.ty, &p.shape).map_err(|e| e.to_string())?;
    }
    let mut out = w.create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in plan {
        let n: u64 = p.shape.iter().product();
        let values = normal_values(seed, &p.name, n as usize, p.mean, p.std);
        out.write_tensor(&p.name, &encode_f32(&values, p.shape[0] as usize, p.ty)).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.finish().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// Writes a random Qwen2 GGUF. Weights are scaled so that activations stay of order one and the
/// next-token distribution is peaked (greedy decoding is then well defined).
pub fn write_qwen2(path: &Path, spec: &Qwen2Spec, vocab: &Vocab) -> Result<(), String> {
    let s = spec;
    let dim = |what: &str, n: usize| u32::try_from(n).map_err(|_| format!("{what} {n} is too large"));
    let meta = Qwen2Meta {
        n_ctx: dim("n_ctx", s.n_ctx)?,
        n_embd: dim("n_embd", s.n_embd)?,
        n_layer: dim("n_layer", s.n_layer)?,
        n_ff: dim("n_ff", s.n_ff)?,
        n_head: dim("n_head", s.n_head)?,
        n_head_kv: dim("n_head_kv", s.n_head_kv)?,
        rope_freq_base: s.rope_freq_base,
        rms_eps: 1e-6,
        n_vocab: dim("the vocabulary size", vocab.len())?,
        tied: s.tied,
    };
    meta.check()?;
    let plan: Vec<Planned> = layout::qwen2_tensors(&meta)
        .into_iter()
        .map(|t| {
            let (mean, std) = match t.role {
                LlmRole::TokenEmbedding => (0.0, 1.0),
                LlmRole::Norm => (1.0, 0.1),
                LlmRole::Bias => (0.0, 0.1),
                LlmRole::Matrix => (0.0, fan_in_std(&t.shape)),
                // Larger than 1/sqrt(n): logits with a spread of several units give a peaked distribution.
                LlmRole::Output => (0.0, 4.0 * fan_in_std(&t.shape)),
            };
            let ty = layout::storage_type(&t.name, &t.shape, s.weight_type);
            Planned { name: t.name, shape: t.shape, ty, mean, std }
        })
        .collect();
    let mut w = GgufWriter::new();
    layout::write_qwen2_metadata(&mut w, &meta, &format!("random qwen2 {}x{} {}", s.n_layer, s.n_embd, s.weight_type), s.weight_type);
    vocab.write(&mut w);
    write_planned(path, w, &plan, s.seed)
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
    let s = spec;
    let meta = ClipMeta {
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
    };
    meta.check()?;
    let plan: Vec<Planned> = meta
        .tensors()
        .into_iter()
        .map(|t| {
            let shape = meta.shape(t);
            let (mean, std) = match t {
                VisionTensor::PosEmbd => (0.0, 0.1),
                VisionTensor::Newline => (0.0, 1.0),
                VisionTensor::Block(_, BlockPart::Ln1 | BlockPart::Ln2, Param::Weight) | VisionTensor::PostLn(Param::Weight) => (1.0, 0.1),
                VisionTensor::PatchEmbd(Param::Bias) | VisionTensor::Block(_, _, Param::Bias) | VisionTensor::PostLn(Param::Bias) | VisionTensor::Projector(_, Param::Bias) => (0.0, 0.02),
                VisionTensor::PatchEmbd(Param::Weight) | VisionTensor::Block(_, _, Param::Weight) | VisionTensor::Projector(_, Param::Weight) => (0.0, fan_in_std(&shape)),
            };
            let name = t.name();
            let ty = layout::vision_storage_type(&name, &shape, s.weight_type);
            Planned { name, shape, ty, mean, std }
        })
        .collect();
    let mut w = GgufWriter::new();
    layout::write_clip_metadata(&mut w, &meta);
    w.set_str(general::NAME, &format!("random SigLIP {}x{} {}", s.blocks, s.hidden, s.weight_type));
    write_planned(path, w, &plan, s.seed)
}
