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

    /// Hugging Face names (relative to transformers' `Qwen2Model`, plus the head `lm_head.weight`)
    /// of the tensors outside the blocks, and what each becomes.
    const HF_GLOBAL: [(&str, &str); 3] = [("embed_tokens.weight", TOKEN_EMBD), ("norm.weight", OUTPUT_NORM), ("lm_head.weight", OUTPUT)];

    /// A block tensor's GGUF name, given the block.
    type BlockName = fn(usize) -> String;

    /// The same for each block's tensors (under `layers.{i}.`).
    const HF_BLOCK: [(&str, BlockName); 12] = [
        ("input_layernorm.weight", attn_norm),
        ("self_attn.q_proj.weight", attn_q),
        ("self_attn.q_proj.bias", attn_q_bias),
        ("self_attn.k_proj.weight", attn_k),
        ("self_attn.k_proj.bias", attn_k_bias),
        ("self_attn.v_proj.weight", attn_v),
        ("self_attn.v_proj.bias", attn_v_bias),
        ("self_attn.o_proj.weight", attn_output),
        ("post_attention_layernorm.weight", ffn_norm),
        ("mlp.gate_proj.weight", ffn_gate),
        ("mlp.up_proj.weight", ffn_up),
        ("mlp.down_proj.weight", ffn_down),
    ];

    /// The GGUF name of a Hugging Face Qwen2 tensor (named as in `HF_GLOBAL`), if it has one.
    pub fn from_hf(name: &str) -> Option<String> {
        if let Some((_, gguf)) = HF_GLOBAL.iter().find(|(hf, _)| *hf == name) {
            return Some(gguf.to_string());
        }
        let (i, part) = name.strip_prefix("layers.")?.split_once('.')?;
        let i: usize = i.parse().ok()?;
        HF_BLOCK.iter().find(|(hf, _)| *hf == part).map(|(_, gguf)| gguf(i))
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
}

/// Tensor names of the vision model (SigLIP tower, projector, image newline) in one table, with the
/// Hugging Face modules they come from, as llama.cpp keeps them (clip-impl.h for the GGUF names,
/// gguf-py's tensor_mapping.py for the Hugging Face ones).
pub mod vision {
    /// The two tensors of a module; GGUF and Hugging Face names both end with it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Param {
        Weight,
        Bias,
    }

    impl Param {
        pub const BOTH: [Param; 2] = [Param::Weight, Param::Bias];

        pub fn suffix(self) -> &'static str {
            match self {
                Param::Weight => "weight",
                Param::Bias => "bias",
            }
        }

        fn parse(s: &str) -> Option<Param> {
            Param::BOTH.into_iter().find(|p| p.suffix() == s)
        }
    }

    /// The modules of a transformer block.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum BlockPart {
        Ln1,
        AttnQ,
        AttnK,
        AttnV,
        AttnOut,
        Ln2,
        /// The MLP's first linear layer (fc1), hidden to FFN width.
        FfnUp,
        /// The MLP's second linear layer (fc2), FFN width to hidden.
        FfnDown,
    }

    impl BlockPart {
        /// In the order a block runs them (and our files store them).
        pub const ALL: [BlockPart; 8] =
            [BlockPart::Ln1, BlockPart::AttnQ, BlockPart::AttnK, BlockPart::AttnV, BlockPart::AttnOut, BlockPart::Ln2, BlockPart::FfnUp, BlockPart::FfnDown];
    }

    /// The projector's linear layers (LLaVA's `mlp2x_gelu`: linear, GELU, linear).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ProjLayer {
        First,
        Second,
    }

    /// One tensor of the vision model.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Tensor {
        /// The patch embedding: a convolution whose stride is its kernel.
        PatchEmbd(Param),
        PosEmbd,
        /// Block `.0`'s module `.1`.
        Block(usize, BlockPart, Param),
        /// SigLIP's final layer norm; LLaVA-OneVision takes the last block's output before it.
        PostLn(Param),
        Projector(ProjLayer, Param),
        /// The embedding appended after each row of image features (and once after a video).
        Newline,
    }

    /// A module of the table: a tensor without its block index and parameter.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Module {
        PatchEmbd,
        PosEmbd,
        Block(BlockPart),
        PostLn,
        Projector(ProjLayer),
        Newline,
    }

    struct Row {
        module: Module,
        /// The name we write, `{bid}` standing for the block index.
        gguf: &'static str,
        /// Names other converters write, which the loader also reads.
        aliases: &'static [&'static str],
        /// The Hugging Face module in a LLaVA-OneVision checkpoint (the older transformers layout
        /// nests the tower in `vision_model.` and newer ones prefix `model.`: converters strip both).
        hf: &'static str,
    }

    const fn row(module: Module, gguf: &'static str, aliases: &'static [&'static str], hf: &'static str) -> Row {
        Row { module, gguf, aliases, hf }
    }

    /// The table. Tensor names are the module's name plus `.weight` or `.bias`, except the newline,
    /// which is one bare vector, and the position embedding, which has no bias.
    const TABLE: [Row; 14] = [
        row(Module::PatchEmbd, "v.patch_embd", &[], "vision_tower.embeddings.patch_embedding"),
        row(Module::PosEmbd, "v.position_embd", &[], "vision_tower.embeddings.position_embedding"),
        row(Module::Block(BlockPart::Ln1), "v.blk.{bid}.ln1", &[], "vision_tower.encoder.layers.{bid}.layer_norm1"),
        row(Module::Block(BlockPart::AttnQ), "v.blk.{bid}.attn_q", &[], "vision_tower.encoder.layers.{bid}.self_attn.q_proj"),
        row(Module::Block(BlockPart::AttnK), "v.blk.{bid}.attn_k", &[], "vision_tower.encoder.layers.{bid}.self_attn.k_proj"),
        row(Module::Block(BlockPart::AttnV), "v.blk.{bid}.attn_v", &[], "vision_tower.encoder.layers.{bid}.self_attn.v_proj"),
        row(Module::Block(BlockPart::AttnOut), "v.blk.{bid}.attn_out", &[], "vision_tower.encoder.layers.{bid}.self_attn.out_proj"),
        row(Module::Block(BlockPart::Ln2), "v.blk.{bid}.ln2", &[], "vision_tower.encoder.layers.{bid}.layer_norm2"),
        row(Module::Block(BlockPart::FfnUp), "v.blk.{bid}.ffn_up", &[], "vision_tower.encoder.layers.{bid}.mlp.fc1"),
        row(Module::Block(BlockPart::FfnDown), "v.blk.{bid}.ffn_down", &[], "vision_tower.encoder.layers.{bid}.mlp.fc2"),
        row(Module::PostLn, "v.post_ln", &[], "vision_tower.post_layernorm"),
        // llama.cpp's clip.cpp reads mm.0; gguf-py's generic tensor map writes mm.1.
        row(Module::Projector(ProjLayer::First), "mm.0", &["mm.1"], "multi_modal_projector.linear_1"),
        row(Module::Projector(ProjLayer::Second), "mm.2", &[], "multi_modal_projector.linear_2"),
        // The legacy LLaVA converter's name, and the current clip-impl.h one.
        row(Module::Newline, "model.image_newline", &["v.image_newline"], "image_newline"),
    ];

    impl Tensor {
        /// The tensors outside the blocks, in the order our files store them.
        pub const EMBEDDINGS: [Tensor; 3] = [Tensor::PatchEmbd(Param::Weight), Tensor::PatchEmbd(Param::Bias), Tensor::PosEmbd];
        pub const PROJECTOR: [Tensor; 4] = [
            Tensor::Projector(ProjLayer::First, Param::Weight),
            Tensor::Projector(ProjLayer::First, Param::Bias),
            Tensor::Projector(ProjLayer::Second, Param::Weight),
            Tensor::Projector(ProjLayer::Second, Param::Bias),
        ];

        /// Block `i`'s tensors, in the order our files store them.
        pub fn block(i: usize) -> impl Iterator<Item = Tensor> {
            BlockPart::ALL.into_iter().flat_map(move |part| Param::BOTH.map(|p| Tensor::Block(i, part, p)))
        }

        fn parts(self) -> (Module, Option<usize>, Option<Param>) {
            match self {
                Tensor::PatchEmbd(p) => (Module::PatchEmbd, None, Some(p)),
                Tensor::PosEmbd => (Module::PosEmbd, None, Some(Param::Weight)),
                Tensor::Block(i, part, p) => (Module::Block(part), Some(i), Some(p)),
                Tensor::PostLn(p) => (Module::PostLn, None, Some(p)),
                Tensor::Projector(l, p) => (Module::Projector(l), None, Some(p)),
                Tensor::Newline => (Module::Newline, None, None),
            }
        }

        fn from_parts(module: Module, bid: Option<usize>, param: Option<Param>) -> Option<Tensor> {
            Some(match (module, bid, param) {
                (Module::PatchEmbd, None, Some(p)) => Tensor::PatchEmbd(p),
                (Module::PosEmbd, None, Some(Param::Weight)) => Tensor::PosEmbd,
                (Module::Block(part), Some(i), Some(p)) => Tensor::Block(i, part, p),
                (Module::PostLn, None, Some(p)) => Tensor::PostLn(p),
                (Module::Projector(l), None, Some(p)) => Tensor::Projector(l, p),
                (Module::Newline, None, None) => Tensor::Newline,
                _ => return None,
            })
        }

        fn row(self) -> &'static Row {
            let module = self.parts().0;
            TABLE.iter().find(|r| r.module == module).expect("every module has a row")
        }

        fn full_name(self, module_pattern: &str) -> String {
            let (_, bid, param) = self.parts();
            let module = match bid {
                Some(i) => module_pattern.replace("{bid}", &i.to_string()),
                None => module_pattern.to_string(),
            };
            match param {
                Some(p) => format!("{module}.{}", p.suffix()),
                None => module,
            }
        }

        /// The GGUF name we write.
        pub fn name(self) -> String {
            self.full_name(self.row().gguf)
        }

        /// Every GGUF name the tensor may have, ours first.
        pub fn names(self) -> Vec<String> {
            let row = self.row();
            std::iter::once(row.gguf).chain(row.aliases.iter().copied()).map(|m| self.full_name(m)).collect()
        }

        /// The names for an error message: "ours (or alias)".
        pub fn describe(self) -> String {
            let names = self.names();
            match names.split_first() {
                Some((ours, rest)) if !rest.is_empty() => format!("{ours} (or {})", rest.join(", ")),
                _ => self.name(),
            }
        }

        /// The Hugging Face name (see `Row::hf`).
        pub fn hf_name(self) -> String {
            self.full_name(self.row().hf)
        }

        /// The tensor a GGUF name (ours or an alias) denotes.
        pub fn from_gguf(name: &str) -> Option<Tensor> {
            TABLE.iter().find_map(|r| std::iter::once(r.gguf).chain(r.aliases.iter().copied()).find_map(|m| parse(r.module, m, name)))
        }

        /// The tensor a Hugging Face name (see `Row::hf`) denotes.
        pub fn from_hf(name: &str) -> Option<Tensor> {
            TABLE.iter().find_map(|r| parse(r.module, r.hf, name))
        }
    }

    /// Matches `name` against a row's module pattern followed by its parameter suffix.
    fn parse(module: Module, pattern: &str, name: &str) -> Option<Tensor> {
        let (stem, param) = match name.rsplit_once('.').and_then(|(stem, p)| Some((stem, Param::parse(p)?))) {
            Some((stem, p)) if module != Module::Newline => (stem, Some(p)),
            _ => (name, None),
        };
        let bid = match pattern.split_once("{bid}") {
            None => {
                if stem != pattern {
                    return None;
                }
                None
            }
            Some((before, after)) => {
                let digits = stem.strip_prefix(before)?.strip_suffix(after)?;
                // Only the canonical decimal form, so that every tensor has exactly one name.
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.len() > 1 && digits.starts_with('0')) {
                    return None;
                }
                Some(digits.parse().ok()?)
            }
        };
        Tensor::from_parts(module, bid, param)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_llama_cpp_s() {
            // clip-impl.h's TN_* patterns, filled in by hand.
            for (t, name) in [
                (Tensor::PatchEmbd(Param::Weight), "v.patch_embd.weight"),
                (Tensor::PatchEmbd(Param::Bias), "v.patch_embd.bias"),
                (Tensor::PosEmbd, "v.position_embd.weight"),
                (Tensor::Block(0, BlockPart::Ln1, Param::Weight), "v.blk.0.ln1.weight"),
                (Tensor::Block(7, BlockPart::AttnQ, Param::Bias), "v.blk.7.attn_q.bias"),
                (Tensor::Block(12, BlockPart::AttnOut, Param::Weight), "v.blk.12.attn_out.weight"),
                (Tensor::Block(25, BlockPart::FfnDown, Param::Bias), "v.blk.25.ffn_down.bias"),
                (Tensor::PostLn(Param::Weight), "v.post_ln.weight"),
                (Tensor::Projector(ProjLayer::First, Param::Weight), "mm.0.weight"),
                (Tensor::Projector(ProjLayer::Second, Param::Bias), "mm.2.bias"),
                (Tensor::Newline, "model.image_newline"),
            ] {
                assert_eq!(t.name(), name);
                assert_eq!(Tensor::from_gguf(name), Some(t), "{name}");
            }
            assert_eq!(Tensor::Projector(ProjLayer::First, Param::Bias).names(), ["mm.0.bias", "mm.1.bias"]);
            assert_eq!(Tensor::Newline.names(), ["model.image_newline", "v.image_newline"]);
            assert_eq!(Tensor::Newline.describe(), "model.image_newline (or v.image_newline)");
            assert_eq!(Tensor::from_gguf("mm.1.weight"), Some(Tensor::Projector(ProjLayer::First, Param::Weight)));
            assert_eq!(Tensor::from_gguf("v.image_newline"), Some(Tensor::Newline));
        }

        #[test]
        fn hugging_face_names_map() {
            for (hf, t) in [
                ("vision_tower.embeddings.patch_embedding.weight", Tensor::PatchEmbd(Param::Weight)),
                ("vision_tower.embeddings.position_embedding.weight", Tensor::PosEmbd),
                ("vision_tower.encoder.layers.3.layer_norm2.bias", Tensor::Block(3, BlockPart::Ln2, Param::Bias)),
                ("vision_tower.encoder.layers.25.mlp.fc1.weight", Tensor::Block(25, BlockPart::FfnUp, Param::Weight)),
                ("vision_tower.encoder.layers.0.self_attn.out_proj.bias", Tensor::Block(0, BlockPart::AttnOut, Param::Bias)),
                ("vision_tower.post_layernorm.weight", Tensor::PostLn(Param::Weight)),
                ("multi_modal_projector.linear_1.bias", Tensor::Projector(ProjLayer::First, Param::Bias)),
                ("multi_modal_projector.linear_2.weight", Tensor::Projector(ProjLayer::Second, Param::Weight)),
                ("image_newline", Tensor::Newline),
            ] {
                assert_eq!(Tensor::from_hf(hf), Some(t), "{hf}");
                assert_eq!(t.hf_name(), hf);
            }
            for bad in [
                "vision_tower.embeddings.position_embedding.bias",
                "vision_tower.encoder.layers.x.mlp.fc1.weight",
                "vision_tower.encoder.layers.01.mlp.fc1.weight",
                "vision_tower.encoder.layers.1.mlp.fc3.weight",
                "vision_tower.head.probe",
                "image_newline.weight",
                "multi_modal_projector.linear_1.scale",
            ] {
                assert_eq!(Tensor::from_hf(bad), None, "{bad}");
            }
        }

        #[test]
        fn every_tensor_round_trips() {
            let all: Vec<Tensor> = Tensor::EMBEDDINGS
                .into_iter()
                .chain((0..3).flat_map(Tensor::block))
                .chain(Param::BOTH.map(Tensor::PostLn))
                .chain(Tensor::PROJECTOR)
                .chain([Tensor::Newline])
                .collect();
            assert_eq!(all.len(), 3 + 3 * 16 + 2 + 4 + 1);
            for t in all {
                for n in t.names() {
                    assert_eq!(Tensor::from_gguf(&n), Some(t), "{n}");
                }
                assert_eq!(Tensor::from_hf(&t.hf_name()), Some(t), "{t:?}");
            }
        }
    }
}
