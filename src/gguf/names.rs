//! The one table of GGUF tensor names and metadata keys, as llama.cpp writes them
//! (llama-arch.cpp for the LLM, clip-impl.h for the vision side). Keys that llama.cpp lacks are
//! marked "ours" and documented in models.md.

/// `general.*` keys.
pub mod general {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const ALIGNMENT: &str = "general.alignment";
    pub const FILE_TYPE: &str = "general.file_type";
    pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
}

/// Keys of the LLM architecture `qwen2` (prefixed with the architecture name).
pub mod llm {
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";

    /// `{arch}.{suffix}`, e.g. `qwen2.block_count`.
    pub fn key(arch: &str, suffix: &str) -> String {
        format!("{arch}.{suffix}")
    }
}

/// Tokenizer keys.
pub mod tokenizer {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// Tensor names of the `qwen2` LLM.
pub mod qwen2 {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";

    pub fn attn_norm(i: usize) -> String {
        format!("blk.{i}.attn_norm.weight")
    }
    pub fn attn_q(i: usize) -> String {
        format!("blk.{i}.attn_q.weight")
    }
    pub fn attn_k(i: usize) -> String {
        format!("blk.{i}.attn_k.weight")
    }
    pub fn attn_v(i: usize) -> String {
        format!("blk.{i}.attn_v.weight")
    }
    pub fn attn_q_bias(i: usize) -> String {
        format!("blk.{i}.attn_q.bias")
    }
    pub fn attn_k_bias(i: usize) -> String {
        format!("blk.{i}.attn_k.bias")
    }
    pub fn attn_v_bias(i: usize) -> String {
        format!("blk.{i}.attn_v.bias")
    }
    pub fn attn_output(i: usize) -> String {
        format!("blk.{i}.attn_output.weight")
    }
    pub fn ffn_norm(i: usize) -> String {
        format!("blk.{i}.ffn_norm.weight")
    }
    pub fn ffn_gate(i: usize) -> String {
        format!("blk.{i}.ffn_gate.weight")
    }
    pub fn ffn_up(i: usize) -> String {
        format!("blk.{i}.ffn_up.weight")
    }
    pub fn ffn_down(i: usize) -> String {
        format!("blk.{i}.ffn_down.weight")
    }
}

/// Keys of the vision model (mmproj-style GGUF, architecture `clip`), as llama.cpp's clip.cpp
/// reads them, plus ours (prefix `dycoke.`, see models.md).
pub mod clip {
    pub const ARCH: &str = "clip";
    pub const HAS_VISION_ENCODER: &str = "clip.has_vision_encoder";
    pub const HAS_LLAVA_PROJECTOR: &str = "clip.has_llava_projector";
    pub const PROJECTOR_TYPE: &str = "clip.projector_type";
    pub const USE_GELU: &str = "clip.use_gelu";
    pub const IMAGE_SIZE: &str = "clip.vision.image_size";
    pub const PATCH_SIZE: &str = "clip.vision.patch_size";
    pub const EMBEDDING_LENGTH: &str = "clip.vision.embedding_length";
    pub const FEED_FORWARD_LENGTH: &str = "clip.vision.feed_forward_length";
    pub const BLOCK_COUNT: &str = "clip.vision.block_count";
    pub const HEAD_COUNT: &str = "clip.vision.attention.head_count";
    pub const LAYER_NORM_EPS: &str = "clip.vision.attention.layer_norm_epsilon";
    pub const IMAGE_MEAN: &str = "clip.vision.image_mean";
    pub const IMAGE_STD: &str = "clip.vision.image_std";
    pub const PROJECTION_DIM: &str = "clip.vision.projection_dim";
    pub const FEATURE_LAYER: &str = "clip.vision.feature_layer";
    pub const GRID_PINPOINTS: &str = "clip.vision.image_grid_pinpoints";
    pub const MERGE_TYPE: &str = "clip.vision.mm_patch_merge_type";
    pub const ASPECT_RATIO: &str = "clip.vision.image_aspect_ratio";

    /// Ours: the vision MLP's activation, "gelu_tanh" (llama.cpp infers GELU_QUICK from use_gelu).
    pub const VISION_ACT: &str = "dycoke.vision.activation";
    /// Ours: the projector's activation, "gelu_erf".
    pub const PROJECTOR_ACT: &str = "dycoke.projector.activation";
    /// Ours: video frame pooling, "bilinear" (LLaVA-OneVision's 27x27 to 14x14).
    pub const VIDEO_POOL_MODE: &str = "dycoke.video.pool_mode";
    /// Ours: the pooling divides the patch grid by this, rounding up.
    pub const VIDEO_POOL_STRIDE: &str = "dycoke.video.pool_stride";
    /// Ours: where the newline goes after a video, "one_token" (once, after the last frame).
    pub const VIDEO_NEWLINE: &str = "dycoke.video.newline_position";

    pub const PATCH_EMBD: &str = "v.patch_embd.weight";
    pub const PATCH_BIAS: &str = "v.patch_embd.bias";
    pub const POS_EMBD: &str = "v.position_embd.weight";
    pub const POST_LN: &str = "v.post_ln.weight";
    /// The first projector layer: llama.cpp's clip.cpp reads mm.0; gguf-py's generic map writes mm.1.
    pub const MM_1: [&str; 2] = ["mm.0", "mm.1"];
    pub const MM_2: &str = "mm.2";
    /// The newline embedding: legacy and older clip-impl.h name, and the current one.
    pub const NEWLINE: [&str; 2] = ["model.image_newline", "v.image_newline"];

    pub fn blk(i: usize, part: &str) -> String {
        format!("v.blk.{i}.{part}")
    }
}
