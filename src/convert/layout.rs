//! What a LLaVA-OneVision GGUF pair holds: the language model (`qwen2`) and the vision model (an
//! mmproj-style `clip` file), each with its metadata keys, its tensors and their shapes, and the
//! types each tensor may be stored in. `convert`, `random` and `quantize` all write by it.

use crate::gguf::names::vision::{BlockPart, Param, ProjLayer, Tensor as VisionTensor};
use crate::gguf::names::{clip, general, llm as llm_keys, qwen2};
use crate::ggml::GgmlType;
use crate::gguf::{Array, GgufWriter};

/// The types weight matrices may be written in.
pub const TARGETS: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// `TARGETS` as the command line spells them.
pub fn type_list() -> String {
    TARGETS.iter().map(|t| t.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ")
}

/// When a K-quant cannot hold a row (its length is not a multiple of 256), the type llama.cpp's
/// quantizer falls back to.
fn fallback(t: GgmlType) -> GgmlType {
    match t {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Iq4Nl,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}

/// The type a tensor is stored in when `target` is asked for: vectors, norms and embeddings that
/// ops need in float stay F32; the patch embedding stays F16 (the convolution wants it); matrices
/// take the target when their row length allows it, else its fallback, else F16.
pub fn storage_type(name: &str, shape: &[u64], target: GgmlType) -> GgmlType {
    if shape.len() < 2 || shape.iter().skip(1).all(|&d| d == 1) || name.contains("norm") || name.ends_with(".bias") {
        return GgmlType::F32;
    }
    match VisionTensor::from_gguf(name) {
        Some(VisionTensor::PatchEmbd(Param::Weight)) => return GgmlType::F16,
        Some(VisionTensor::PosEmbd | VisionTensor::Newline) => return GgmlType::F32,
        _ => {}
    }
    let fits = |t: GgmlType| shape[0] % t.block_size() == 0;
    if fits(target) {
        target
    } else if fits(fallback(target)) {
        fallback(target)
    } else {
        GgmlType::F16
    }
}

/// The vision matrices' type when only the language model's is given. The vision tower stays in
/// float: measured on SigLIP-so400m (README, "Vision encoder"), Q8_0 is slower than F16 on the CPU
/// and Q4_0 (repacked) only as fast as F32, and both cost fidelity. Float output types are kept
/// (F32 stays exact; F16 is lossless from the published float16 checkpoints, and the engine widens
/// it to F32 at load where that is faster); quantized ones give F16.
pub fn default_vision_type(outtype: GgmlType) -> GgmlType {
    match outtype {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => outtype,
        _ => GgmlType::F16,
    }
}

/// The storage type of a vision tensor: matrices take `outtype` only where their rows allow it
/// exactly (no fallback quantization), else F16; the patch embedding stays F16, or F32 in F32 files.
pub fn vision_storage_type(name: &str, ne: &[u64], outtype: GgmlType) -> GgmlType {
    let mut ty = storage_type(name, ne, outtype);
    if ty != outtype && ty != GgmlType::F32 && ty != GgmlType::F16 {
        ty = GgmlType::F16;
    }
    if outtype == GgmlType::F32 && VisionTensor::from_gguf(name) == Some(VisionTensor::PatchEmbd(Param::Weight)) {
        ty = GgmlType::F32;
    }
    ty
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

/// The architecture name of the language model file.
pub const QWEN2_ARCH: &str = "qwen2";

/// The shape of the language model: its metadata, plus what only its tensors say.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2Meta {
    pub n_ctx: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub n_ff: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub rope_freq_base: f32,
    pub rms_eps: f32,
    /// The embedding's rows (the tokenizer is padded to them).
    pub n_vocab: u32,
    /// No output matrix: the embedding matrix is reused.
    pub tied: bool,
}

impl Qwen2Meta {
    /// The dimensions must fit together for the tensors' shapes to exist.
    pub fn check(&self) -> Result<(), String> {
        let (e, h, kv) = (self.n_embd, self.n_head, self.n_head_kv);
        if h == 0 || kv == 0 || e % h != 0 || h % kv != 0 || (e / h) % 2 != 0 {
            return Err(format!(
                "inconsistent heads: n_embd {e} n_head {h} n_head_kv {kv} (the heads must divide n_embd into an even head size, the KV heads the heads)"
            ));
        }
        Ok(())
    }

    fn kv_width(&self) -> u32 {
        self.n_embd / self.n_head * self.n_head_kv
    }
}

/// Writes the language model's metadata keys, as llama.cpp's converter does.
pub fn write_qwen2_metadata(w: &mut GgufWriter, m: &Qwen2Meta, name: &str, weight_type: GgmlType) {
    w.set_str(general::ARCHITECTURE, QWEN2_ARCH);
    w.set_str(general::NAME, name);
    w.set_u32(general::FILE_TYPE, file_type(weight_type));
    w.set_u32(general::QUANTIZATION_VERSION, 2);
    let k = |suffix: &str| llm_keys::key(QWEN2_ARCH, suffix);
    w.set_u32(&k(llm_keys::CONTEXT_LENGTH), m.n_ctx);
    w.set_u32(&k(llm_keys::EMBEDDING_LENGTH), m.n_embd);
    w.set_u32(&k(llm_keys::BLOCK_COUNT), m.n_layer);
    w.set_u32(&k(llm_keys::FEED_FORWARD_LENGTH), m.n_ff);
    w.set_u32(&k(llm_keys::HEAD_COUNT), m.n_head);
    w.set_u32(&k(llm_keys::HEAD_COUNT_KV), m.n_head_kv);
    w.set_f32(&k(llm_keys::ROPE_FREQ_BASE), m.rope_freq_base);
    w.set_f32(&k(llm_keys::RMS_EPS), m.rms_eps);
}

/// What a language model tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmRole {
    TokenEmbedding,
    Norm,
    Matrix,
    Bias,
    Output,
}

/// A tensor of the language model file: GGUF name, role, and shape (ggml order: row length first).
#[derive(Clone, Debug, PartialEq)]
pub struct LlmTensor {
    pub name: String,
    pub role: LlmRole,
    pub shape: Vec<u64>,
}

/// The language model's tensors, in the order our files store them.
pub fn qwen2_tensors(m: &Qwen2Meta) -> Vec<LlmTensor> {
    let (e, kv, ff, v) = (u64::from(m.n_embd), u64::from(m.kv_width()), u64::from(m.n_ff), u64::from(m.n_vocab));
    let t = |name: String, role: LlmRole, shape: &[u64]| LlmTensor { name, role, shape: shape.to_vec() };
    let mut out = vec![t(qwen2::TOKEN_EMBD.into(), LlmRole::TokenEmbedding, &[e, v])];
    for i in 0..m.n_layer as usize {
        out.extend([
            t(qwen2::attn_norm(i), LlmRole::Norm, &[e]),
            t(qwen2::attn_q(i), LlmRole::Matrix, &[e, e]),
            t(qwen2::attn_k(i), LlmRole::Matrix, &[e, kv]),
            t(qwen2::attn_v(i), LlmRole::Matrix, &[e, kv]),
            t(qwen2::attn_q_bias(i), LlmRole::Bias, &[e]),
            t(qwen2::attn_k_bias(i), LlmRole::Bias, &[kv]),
            t(qwen2::attn_v_bias(i), LlmRole::Bias, &[kv]),
            t(qwen2::attn_output(i), LlmRole::Matrix, &[e, e]),
            t(qwen2::ffn_norm(i), LlmRole::Norm, &[e]),
            t(qwen2::ffn_gate(i), LlmRole::Matrix, &[e, ff]),
            t(qwen2::ffn_up(i), LlmRole::Matrix, &[e, ff]),
            t(qwen2::ffn_down(i), LlmRole::Matrix, &[ff, e]),
        ]);
    }
    out.push(t(qwen2::OUTPUT_NORM.into(), LlmRole::Norm, &[e]));
    if !m.tied {
        out.push(t(qwen2::OUTPUT.into(), LlmRole::Output, &[e, v]));
    }
    out
}

/// The metadata of an mmproj file.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipMeta {
    pub image_size: u32,
    pub patch_size: u32,
    pub hidden: u32,
    pub ffn: u32,
    pub blocks: u32,
    pub heads: u32,
    pub eps: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The language model's width.
    pub out_dim: u32,
    /// The features come after this many blocks.
    pub feature_layer: i32,
    /// Flattened (height, width) pairs; empty for LLaVA-OneVision's default set.
    pub pinpoints: Vec<i32>,
    pub aspect_ratio: String,
}

impl ClipMeta {
    /// The dimensions must fit together for the tensors' shapes to exist.
    pub fn check(&self) -> Result<(), String> {
        let s = self;
        if s.heads == 0 || s.hidden % s.heads != 0 || s.patch_size == 0 || s.patch_size > s.image_size {
            return Err(format!("inconsistent vision shape: hidden {} heads {} patch {} image {}", s.hidden, s.heads, s.patch_size, s.image_size));
        }
        Ok(())
    }

    /// The shape of one of the file's tensors (ggml order).
    pub fn shape(&self, t: VisionTensor) -> Vec<u64> {
        let (h, ff, d, p) = (u64::from(self.hidden), u64::from(self.ffn), u64::from(self.out_dim), u64::from(self.patch_size));
        let grid = u64::from(self.image_size / self.patch_size.max(1));
        match t {
            VisionTensor::PatchEmbd(Param::Weight) => vec![p, p, 3, h],
            VisionTensor::PosEmbd => vec![h, grid * grid],
            VisionTensor::Block(_, BlockPart::FfnUp, Param::Weight) => vec![h, ff],
            VisionTensor::Block(_, BlockPart::FfnUp, Param::Bias) => vec![ff],
            VisionTensor::Block(_, BlockPart::FfnDown, Param::Weight) => vec![ff, h],
            VisionTensor::Block(_, BlockPart::Ln1 | BlockPart::Ln2, _) => vec![h],
            VisionTensor::Block(_, _, Param::Weight) => vec![h, h],
            VisionTensor::PatchEmbd(Param::Bias) | VisionTensor::Block(_, _, Param::Bias) | VisionTensor::PostLn(_) => vec![h],
            VisionTensor::Projector(ProjLayer::First, Param::Weight) => vec![h, d],
            VisionTensor::Projector(ProjLayer::Second, Param::Weight) => vec![d, d],
            VisionTensor::Projector(_, Param::Bias) | VisionTensor::Newline => vec![d],
        }
    }

    /// The file's tensors, in the order our files store them (no post-LN: the features are the
    /// last block's raw output).
    pub fn tensors(&self) -> Vec<VisionTensor> {
        let blocks = (0..self.blocks as usize).flat_map(VisionTensor::block);
        VisionTensor::EMBEDDINGS.into_iter().chain(blocks).chain(VisionTensor::PROJECTOR).chain([VisionTensor::Newline]).collect()
    }
}

/// Writes the keys llama.cpp's clip.cpp reads and ours (see models.md).
pub fn write_clip_metadata(v: &mut GgufWriter, m: &ClipMeta) {
    v.set_str(general::ARCHITECTURE, clip::ARCH);
    v.set_str(general::NAME, "LLaVA-OneVision vision model (SigLIP and projector)");
    v.set_bool(clip::HAS_VISION_ENCODER, true);
    v.set_bool(clip::HAS_LLAVA_PROJECTOR, true);
    v.set_str(clip::PROJECTOR_TYPE, "mlp");
    // clip.cpp picks GELU over GELU_QUICK with this; the exact activations are our keys below.
    v.set_bool(clip::USE_GELU, true);
    v.set_u32(clip::IMAGE_SIZE, m.image_size);
    v.set_u32(clip::PATCH_SIZE, m.patch_size);
    v.set_u32(clip::EMBEDDING_LENGTH, m.hidden);
    v.set_u32(clip::FEED_FORWARD_LENGTH, m.ffn);
    v.set_u32(clip::BLOCK_COUNT, m.blocks);
    v.set_u32(clip::HEAD_COUNT, m.heads);
    v.set_f32(clip::LAYER_NORM_EPS, m.eps);
    v.set_array(clip::IMAGE_MEAN, Array::F32(m.mean.to_vec()));
    v.set_array(clip::IMAGE_STD, Array::F32(m.std.to_vec()));
    v.set_u32(clip::PROJECTION_DIM, m.out_dim);
    v.set_array(clip::FEATURE_LAYER, Array::I32(vec![m.feature_layer]));
    if !m.pinpoints.is_empty() {
        v.set_array(clip::GRID_PINPOINTS, Array::I32(m.pinpoints.clone()));
    }
    v.set_str(clip::MERGE_TYPE, "spatial_unpad");
    v.set_str(clip::ASPECT_RATIO, &m.aspect_ratio);
    v.set_str(clip::VISION_ACT, "gelu_tanh");
    v.set_str(clip::PROJECTOR_ACT, "gelu_erf");
    v.set_str(clip::VIDEO_POOL_MODE, "bilinear");
    v.set_u32(clip::VIDEO_POOL_STRIDE, 2);
    v.set_str(clip::VIDEO_NEWLINE, "one_token");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_types_follow_row_sizes() {
        assert_eq!(storage_type("blk.0.attn_q.weight", &[256, 256], GgmlType::Q4K), GgmlType::Q4K);
        assert_eq!(storage_type("blk.0.attn_q.weight", &[896, 896], GgmlType::Q4K), GgmlType::Q5_0);
        assert_eq!(storage_type("blk.0.attn_q.weight", &[72, 16], GgmlType::Q6K), GgmlType::F16);
        assert_eq!(storage_type("blk.0.attn_norm.weight", &[896], GgmlType::Q8_0), GgmlType::F32);
        assert_eq!(storage_type("blk.0.attn_q.bias", &[896], GgmlType::Q8_0), GgmlType::F32);
        assert_eq!(storage_type("v.patch_embd.weight", &[14, 14, 3, 1152], GgmlType::Q8_0), GgmlType::F16);
        assert_eq!(storage_type("v.position_embd.weight", &[1152, 729], GgmlType::Q8_0), GgmlType::F32);
        assert_eq!(storage_type("v.image_newline", &[896, 2], GgmlType::Q8_0), GgmlType::F32);
    }

    #[test]
    fn vision_matrices_are_not_quantized_by_fallback() {
        // 1152-long rows hold Q8_0 blocks but not Q4_K's: F16, not Q5_0.
        assert_eq!(vision_storage_type("v.blk.0.attn_q.weight", &[1152, 1152], GgmlType::Q8_0), GgmlType::Q8_0);
        assert_eq!(vision_storage_type("v.blk.0.attn_q.weight", &[1152, 1152], GgmlType::Q4K), GgmlType::F16);
        assert_eq!(vision_storage_type("v.patch_embd.weight", &[14, 14, 3, 1152], GgmlType::F32), GgmlType::F32);
        assert_eq!(vision_storage_type("v.patch_embd.weight", &[14, 14, 3, 1152], GgmlType::Bf16), GgmlType::F16);
    }

    fn so400m() -> ClipMeta {
        ClipMeta {
            image_size: 384,
            patch_size: 14,
            hidden: 1152,
            ffn: 4304,
            blocks: 2,
            heads: 16,
            eps: 1e-6,
            mean: [0.5; 3],
            std: [0.5; 3],
            out_dim: 896,
            feature_layer: 2,
            pinpoints: Vec::new(),
            aspect_ratio: "anyres_max_9".into(),
        }
    }

    #[test]
    fn mmproj_tensors_and_shapes() {
        let m = so400m();
        let t = m.tensors();
        let names: Vec<String> = t.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), 3 + 2 * 16 + 4 + 1);
        assert_eq!(&names[..5], ["v.patch_embd.weight", "v.patch_embd.bias", "v.position_embd.weight", "v.blk.0.ln1.weight", "v.blk.0.ln1.bias"]);
        assert_eq!(&names[names.len() - 5..], ["mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias", "model.image_newline"]);
        let shape = |n: &str| m.shape(t[names.iter().position(|x| x == n).unwrap()]);
        assert_eq!(shape("v.patch_embd.weight"), [14, 14, 3, 1152]);
        assert_eq!(shape("v.position_embd.weight"), [1152, 729]);
        assert_eq!(shape("v.blk.1.attn_out.weight"), [1152, 1152]);
        assert_eq!(shape("v.blk.1.ffn_up.weight"), [1152, 4304]);
        assert_eq!(shape("v.blk.1.ffn_up.bias"), [4304]);
        assert_eq!(shape("v.blk.1.ffn_down.weight"), [4304, 1152]);
        assert_eq!(shape("v.blk.1.ffn_down.bias"), [1152]);
        assert_eq!(shape("mm.0.weight"), [1152, 896]);
        assert_eq!(shape("mm.2.weight"), [896, 896]);
        assert_eq!(shape("model.image_newline"), [896]);
        assert!(m.check().is_ok());
        assert!(ClipMeta { heads: 5, ..so400m() }.check().is_err());
        assert!(ClipMeta { heads: 0, ..so400m() }.check().is_err());
    }

    #[test]
    fn qwen2_tensors_and_shapes() {
        // Qwen2-0.5B's shape.
        let m = Qwen2Meta { n_ctx: 32768, n_embd: 896, n_layer: 24, n_ff: 4864, n_head: 14, n_head_kv: 2, rope_freq_base: 1e6, rms_eps: 1e-6, n_vocab: 151936, tied: true };
        assert!(m.check().is_ok());
        let t = qwen2_tensors(&m);
        assert_eq!(t.len(), 1 + 24 * 12 + 1);
        let find = |n: &str| t.iter().find(|t| t.name == n).unwrap();
        assert_eq!(find("token_embd.weight").shape, [896, 151936]);
        assert_eq!(find("blk.3.attn_k.weight").shape, [896, 128]);
        assert_eq!(find("blk.3.attn_v.bias").shape, [128]);
        assert_eq!(find("blk.23.ffn_down.weight").shape, [4864, 896]);
        assert_eq!(find("blk.23.ffn_down.weight").role, LlmRole::Matrix);
        assert!(t.iter().all(|t| t.name != "output.weight"));
        let untied = qwen2_tensors(&Qwen2Meta { tied: false, ..m.clone() });
        assert_eq!(untied.last().map(|t| (t.name.as_str(), t.role)), Some(("output.weight", LlmRole::Output)));
        for bad in [Qwen2Meta { n_head: 0, ..m.clone() }, Qwen2Meta { n_head_kv: 3, ..m.clone() }, Qwen2Meta { n_embd: 900, ..m.clone() }] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
