//! Hugging Face LLaVA-OneVision checkpoints (the llava-hf layout) to two GGUF files: the language
//! model (`qwen2`, as llama.cpp writes it, with the full tokenizer) and the vision model (an
//! mmproj-style `clip` file). Tensors stream one at a time from the memory-mapped safetensors
//! shards to the output; the model is never held in memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dycoke::ggml::MappedFile;
use dycoke::gguf::names::{clip, general, llm as llm_keys, tokenizer as tok_keys};
use dycoke::ggml::GgmlType;
use dycoke::gguf::{Array, GgufWriter};
use serde_json::Value as Json;

use crate::quantize::{encode_f32, storage_type};

/// Qwen2's ChatML template (string contents, default system prompt). The llava-hf template expects
/// contents as lists of typed parts; the engine builds media prompts with plain strings.
pub const QWEN2_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub input: PathBuf,
    /// Outputs are `{prefix}-llm.gguf` and `{prefix}-mmproj.gguf`.
    pub prefix: PathBuf,
    pub outtype: GgmlType,
}

#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub llm: PathBuf,
    pub mmproj: PathBuf,
    pub tensors: usize,
}

type Res<T> = std::result::Result<T, String>;

fn read_json(path: &Path) -> Res<Json> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON ({e})", path.display()))
}

/// A field of a JSON object, with an error naming the file and the key.
struct Cfg<'a> {
    json: &'a Json,
    file: &'a Path,
    section: &'a str,
}

impl Cfg<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }
    fn missing(&self, key: &str) -> String {
        format!("{}: {}{key} is missing", self.file.display(), self.section)
    }
    fn uint(&self, key: &str) -> Res<u64> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.as_u64().filter(|&n| n > 0 && n < 1 << 32).ok_or_else(|| format!("{}: {}{key} is {v}, not a positive integer", self.file.display(), self.section))
    }
    fn float_or(&self, key: &str, default: f64) -> Res<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| format!("{}: {}{key} is {v}, not a number", self.file.display(), self.section)),
        }
    }
    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> &'b str {
        self.get(key).and_then(|v| v.as_str()).unwrap_or(default)
    }
    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(|v| v.as_bool()).unwrap_or(default)
    }
}

/// The safetensors shards of a checkpoint, memory-mapped, with each tensor's location.
struct Checkpoint {
    maps: Vec<MappedFile>,
    /// name -> (shard, dtype, shape, byte range in the shard)
    tensors: HashMap<String, (usize, safetensors::Dtype, Vec<usize>, std::ops::Range<usize>)>,
    names: Vec<String>,
}

fn open_checkpoint(dir: &Path) -> Res<Checkpoint> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let j = read_json(&index)?;
        let map = j.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| format!("{}: no weight_map", index.display()))?;
        let mut f: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|s| dir.join(s)).collect();
        f.sort();
        f.dedup();
        f
    } else {
        let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with("model") && n.ends_with(".safetensors")
            })
            .collect();
        f.sort();
        f
    };
    if files.is_empty() {
        return Err(format!("{}: no model*.safetensors files", dir.display()));
    }
    files.dedup();
    let mut cp = Checkpoint { maps: Vec::new(), tensors: HashMap::new(), names: Vec::new() };
    for (i, path) in files.iter().enumerate() {
        let map = MappedFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (header, meta) = safetensors::SafeTensors::read_metadata(map.bytes()).map_err(|e| format!("{}: not a safetensors file ({e})", path.display()))?;
        let base = 8 + header;
        let mut entries: Vec<_> = meta.tensors().into_iter().collect();
        entries.sort_by_key(|(_, info)| info.data_offsets.0);
        for (name, info) in entries {
            let range = base + info.data_offsets.0..base + info.data_offsets.1;
            if range.end > map.bytes().len() {
                return Err(format!("{}: tensor {name} lies outside the file", path.display()));
            }
            cp.names.push(name.clone());
            cp.tensors.insert(name, (i, info.dtype, info.shape.clone(), range));
        }
        cp.maps.push(map);
    }
    Ok(cp)
}

impl Checkpoint {
    fn f32_values(&self, name: &str) -> Res<Vec<f32>> {
        let (shard, dtype, _, range) = self.tensors.get(name).ok_or_else(|| format!("tensor {name} is missing"))?;
        let bytes = &self.maps[*shard].bytes()[range.clone()];
        let ty = match dtype {
            safetensors::Dtype::F32 => GgmlType::F32,
            safetensors::Dtype::F16 => GgmlType::F16,
            safetensors::Dtype::BF16 => GgmlType::Bf16,
            d => return Err(format!("tensor {name} has type {d:?}; only F32, F16 and BF16 checkpoints convert")),
        };
        let n = bytes.len() / (ty.block_bytes() as usize);
        Ok(crate::quantize::decode_to_f32(ty, bytes, n))
    }
}

enum Target {
    Llm(String),
    Vision(String),
    Skip,
}

fn layer_part(rest: &str) -> Option<(usize, &str)> {
    let (n, part) = rest.split_once('.')?;
    Some((n.parse().ok()?, part))
}

/// Maps a checkpoint tensor name (llava-hf's old or transformers 5.x's layout) to its GGUF name.
fn map_name(hf: &str) -> Option<Target> {
    let name = hf.strip_prefix("model.").filter(|r| {
        r.starts_with("language_model.") || r.starts_with("vision_tower.") || r.starts_with("multi_modal_projector.") || *r == "image_newline"
    });
    let name = name.unwrap_or(hf);
    if name == "image_newline" {
        return Some(Target::Vision("model.image_newline".into()));
    }
    if name == "lm_head.weight" || name == "language_model.lm_head.weight" {
        return Some(Target::Llm("output.weight".into()));
    }
    if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
        let (layer, kind) = rest.split_once('.')?;
        let idx = match layer {
            "linear_1" => 0,
            "linear_2" => 2,
            _ => return None,
        };
        return Some(Target::Vision(format!("mm.{idx}.{kind}")));
    }
    if let Some(rest) = name.strip_prefix("language_model.") {
        let rest = rest.strip_prefix("model.").unwrap_or(rest);
        return match rest {
            "embed_tokens.weight" => Some(Target::Llm("token_embd.weight".into())),
            "norm.weight" => Some(Target::Llm("output_norm.weight".into())),
            _ => {
                let (i, part) = layer_part(rest.strip_prefix("layers.")?)?;
                let gguf = match part {
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.q_proj.bias" => "attn_q.bias",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.k_proj.bias" => "attn_k.bias",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.v_proj.bias" => "attn_v.bias",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    _ => return None,
                };
                Some(Target::Llm(format!("blk.{i}.{gguf}")))
            }
        };
    }
    if let Some(rest) = name.strip_prefix("vision_tower.") {
        let rest = rest.strip_prefix("vision_model.").unwrap_or(rest);
        return match rest {
            "embeddings.patch_embedding.weight" => Some(Target::Vision("v.patch_embd.weight".into())),
            "embeddings.patch_embedding.bias" => Some(Target::Vision("v.patch_embd.bias".into())),
            "embeddings.position_embedding.weight" => Some(Target::Vision("v.position_embd.weight".into())),
            // LLaVA-OneVision uses the last block's raw output and no attention-pooling head.
            r if r.starts_with("post_layernorm.") || r.starts_with("head.") => Some(Target::Skip),
            _ => {
                let (i, part) = layer_part(rest.strip_prefix("encoder.layers.")?)?;
                let (module, kind) = part.rsplit_once('.')?;
                let gguf = match module {
                    "layer_norm1" => "ln1",
                    "layer_norm2" => "ln2",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.out_proj" => "attn_out",
                    "mlp.fc1" => "ffn_up",
                    "mlp.fc2" => "ffn_down",
                    _ => return None,
                };
                Some(Target::Vision(format!("v.blk.{i}.{gguf}.{kind}")))
            }
        };
    }
    None
}

/// The tokenizer of tokenizer.json, padded to `n_vocab` entries as llama.cpp's converter does.
fn tokenizer_keys(dir: &Path, n_vocab: usize, w: &mut GgufWriter) -> Res<()> {
    let path = dir.join("tokenizer.json");
    let t = read_json(&path)?;
    let model = t.get("model").ok_or_else(|| format!("{}: no model section", path.display()))?;
    if model.get("type").and_then(|v| v.as_str()) != Some("BPE") {
        return Err(format!("{}: the tokenizer is not BPE (LLaVA-OneVision uses Qwen2's byte-level BPE)", path.display()));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![1i32; n_vocab];
    let vocab = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| format!("{}: no vocab", path.display()))?;
    let mut place = |id: u64, text: &str, ty: i32| -> Res<()> {
        let id = id as usize;
        if id >= n_vocab {
            return Err(format!("{}: token {text:?} has id {id}, beyond the {n_vocab} embedding rows", path.display()));
        }
        tokens[id] = Some(text.to_string());
        types[id] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        place(id.as_u64().ok_or_else(|| format!("{}: bad id of {text:?}", path.display()))?, text, 1)?;
    }
    for a in t.get("added_tokens").and_then(|v| v.as_array()).into_iter().flatten() {
        let (Some(id), Some(text)) = (a.get("id").and_then(|v| v.as_u64()), a.get("content").and_then(|v| v.as_str())) else { continue };
        // As llama.cpp's converter: special added tokens are control tokens, others user-defined.
        let special = a.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
        place(id, text, if special { 3 } else { 4 })?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = 5; // unused padding
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges: Vec<String> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| format!("{}: no merges", path.display()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) if p.len() == 2 => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("{}: merges must be strings or pairs of strings", path.display()))?;
    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    w.set_str(tok_keys::MODEL, "gpt2");
    w.set_str(tok_keys::PRE, "qwen2");
    w.set_array(tok_keys::TOKENS, Array::String(tokens.clone()));
    w.set_array(tok_keys::TOKEN_TYPE, Array::I32(types));
    w.set_array(tok_keys::MERGES, Array::String(merges));
    let eos = id_of("<|im_end|>").ok_or_else(|| format!("{}: no <|im_end|> token", path.display()))?;
    w.set_u32(tok_keys::EOS_ID, eos);
    if let Some(eot) = id_of("<|endoftext|>") {
        w.set_u32(tok_keys::BOS_ID, eot);
        w.set_u32(tok_keys::PAD_ID, eot);
    }
    w.set_bool(tok_keys::ADD_BOS, false);
    w.set_str(tok_keys::CHAT_TEMPLATE, QWEN2_CHAT_TEMPLATE);
    Ok(())
}

/// The image mean and std of the processor configuration (transformers 5.x's processor_config.json
/// or the older preprocessor_config.json); LLaVA-OneVision uses 0.5.
fn mean_std(dir: &Path) -> Res<([f32; 3], [f32; 3])> {
    let candidates = [
        (dir.join("processor_config.json"), Some("image_processor")),
        (dir.join("preprocessor_config.json"), None),
    ];
    for (path, section) in candidates {
        if !path.exists() {
            continue;
        }
        let j = read_json(&path)?;
        let cfg = match section {
            Some(s) => match j.get(s) {
                Some(c) => c.clone(),
                None => continue,
            },
            None => j,
        };
        let three = |k: &str| -> Option<[f32; 3]> {
            let a = cfg.get(k)?.as_array()?;
            (a.len() == 3).then(|| [a[0].as_f64().unwrap_or(0.5) as f32, a[1].as_f64().unwrap_or(0.5) as f32, a[2].as_f64().unwrap_or(0.5) as f32])
        };
        if let (Some(m), Some(s)) = (three("image_mean"), three("image_std")) {
            return Ok((m, s));
        }
    }
    Ok(([0.5; 3], [0.5; 3]))
}

/// The metadata of an mmproj file.
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

/// The storage type of a vision tensor: matrices take `outtype` only where their rows allow it
/// exactly (no fallback quantization), else F16; the patch embedding stays F16, or F32 in F32 files.
pub fn vision_storage_type(name: &str, ne: &[u64], outtype: GgmlType) -> GgmlType {
    let mut ty = storage_type(name, ne, outtype);
    if ty != outtype && ty != GgmlType::F32 && ty != GgmlType::F16 {
        ty = GgmlType::F16;
    }
    if name == clip::PATCH_EMBD && outtype == GgmlType::F32 {
        ty = GgmlType::F32;
    }
    ty
}

/// Converts a checkpoint; `progress(done, total, tensor)` follows the tensors.
pub fn convert(opts: &ConvertOptions, progress: &mut dyn FnMut(usize, usize, &str)) -> Res<ConvertReport> {
    if !crate::quantize::TARGETS.contains(&opts.outtype) {
        return Err(format!("unsupported output type {}; use one of {}", opts.outtype, crate::quantize::type_list()));
    }
    let dir = &opts.input;
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let top = Cfg { json: &config, file: &config_path, section: "" };
    let model_type = top.str_or("model_type", "");
    if model_type != "llava_onevision" {
        return Err(format!(
            "{}: model_type is {model_type:?}; this converter handles LLaVA-OneVision checkpoints (\"llava_onevision\") only",
            config_path.display()
        ));
    }
    let text = Cfg { json: top.get("text_config").ok_or_else(|| top.missing("text_config"))?, file: &config_path, section: "text_config." };
    let vision = Cfg { json: top.get("vision_config").ok_or_else(|| top.missing("vision_config"))?, file: &config_path, section: "vision_config." };
    if text.str_or("model_type", "qwen2") != "qwen2" {
        return Err(format!("{}: text_config.model_type is {:?}; only Qwen2 language models convert", config_path.display(), text.str_or("model_type", "")));
    }
    if top.str_or("vision_feature_select_strategy", "full") != "full" {
        return Err(format!("{}: vision_feature_select_strategy must be \"full\" (SigLIP has no CLS token)", config_path.display()));
    }
    if !matches!(top.str_or("projector_hidden_act", "gelu"), "gelu") {
        return Err(format!("{}: projector_hidden_act must be \"gelu\"", config_path.display()));
    }
    if vision.str_or("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh" {
        return Err(format!("{}: vision_config.hidden_act must be \"gelu_pytorch_tanh\" (SigLIP)", config_path.display()));
    }

    let cp = open_checkpoint(dir)?;
    // Plan every tensor first (names, shapes, types), so the GGUF heads can be written up front.
    let mut llm_plan: Vec<(String, String, Vec<u64>, GgmlType)> = Vec::new();
    let mut vis_plan: Vec<(String, String, Vec<u64>, GgmlType)> = Vec::new();
    for name in &cp.names {
        let (_, _, shape, _) = &cp.tensors[name];
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        match map_name(name) {
            Some(Target::Llm(g)) => {
                let ty = storage_type(&g, &ne, opts.outtype);
                llm_plan.push((name.clone(), g, ne, ty));
            }
            Some(Target::Vision(g)) => {
                let ty = vision_storage_type(&g, &ne, opts.outtype);
                vis_plan.push((name.clone(), g, ne, ty));
            }
            Some(Target::Skip) => {}
            None => return Err(format!("{}: unexpected tensor {name} (not part of a LLaVA-OneVision checkpoint)", dir.display())),
        }
    }
    let n_vocab = llm_plan.iter().find(|p| p.1 == "token_embd.weight").map(|p| p.2[1] as usize).ok_or("the checkpoint has no embed_tokens")?;
    let tied = top.bool_or("tie_word_embeddings", text.bool_or("tie_word_embeddings", false));
    if tied {
        llm_plan.retain(|p| p.1 != "output.weight");
    }

    // The language model.
    let mut w = GgufWriter::new();
    let arch = "qwen2";
    w.set_str(general::ARCHITECTURE, arch);
    w.set_str(general::NAME, &format!("LLaVA-OneVision language model ({})", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    w.set_u32(general::FILE_TYPE, crate::random::file_type(opts.outtype));
    w.set_u32(general::QUANTIZATION_VERSION, 2);
    let k = |s: &str| llm_keys::key(arch, s);
    w.set_u32(&k(llm_keys::CONTEXT_LENGTH), text.uint("max_position_embeddings")? as u32);
    w.set_u32(&k(llm_keys::EMBEDDING_LENGTH), text.uint("hidden_size")? as u32);
    w.set_u32(&k(llm_keys::BLOCK_COUNT), text.uint("num_hidden_layers")? as u32);
    w.set_u32(&k(llm_keys::FEED_FORWARD_LENGTH), text.uint("intermediate_size")? as u32);
    let heads = text.uint("num_attention_heads")?;
    w.set_u32(&k(llm_keys::HEAD_COUNT), heads as u32);
    w.set_u32(&k(llm_keys::HEAD_COUNT_KV), text.get("num_key_value_heads").and_then(|v| v.as_u64()).unwrap_or(heads) as u32);
    // transformers 5.x nests RoPE settings in rope_parameters; Qwen2Config's default base is 10000.
    let rope = text.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(|v| v.as_f64());
    w.set_f32(&k(llm_keys::ROPE_FREQ_BASE), rope.map_or_else(|| text.float_or("rope_theta", 10000.0), Ok)? as f32);
    w.set_f32(&k(llm_keys::RMS_EPS), text.float_or("rms_norm_eps", 1e-6)? as f32);
    tokenizer_keys(dir, n_vocab, &mut w)?;
    for (_, g, ne, ty) in &llm_plan {
        w.add_tensor(g, *ty, ne).map_err(|e| e.to_string())?;
    }

    // The vision model.
    let mut v = GgufWriter::new();
    let vh = vision.uint("hidden_size")?;
    let blocks = vision.uint("num_hidden_layers")?;
    let image_size = vision.uint("image_size")?;
    let (mean, std) = mean_std(dir)?;
    let feature = match top.get("vision_feature_layer").and_then(|x| x.as_i64()).unwrap_or(-1) {
        n if n < 0 => blocks as i64 + 1 + n,
        n => n,
    };
    if feature < 1 || feature > blocks as i64 {
        return Err(format!("{}: vision_feature_layer selects layer {feature} of {blocks}", config_path.display()));
    }
    let d = vis_plan.iter().find(|p| p.1 == "mm.2.weight").map(|p| p.2[1]).ok_or("the checkpoint has no multi_modal_projector.linear_2")?;
    let pinpoints: Vec<i32> = top
        .get("image_grid_pinpoints")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|pair| pair.as_array()).flat_map(|pair| pair.iter().filter_map(|x| x.as_i64()).map(|x| x as i32)).collect())
        .unwrap_or_default();
    write_clip_metadata(
        &mut v,
        &ClipMeta {
            image_size: image_size as u32,
            patch_size: vision.uint("patch_size")? as u32,
            hidden: vh as u32,
            ffn: vision.uint("intermediate_size")? as u32,
            blocks: blocks as u32,
            heads: vision.uint("num_attention_heads")? as u32,
            eps: vision.float_or("layer_norm_eps", 1e-6)? as f32,
            mean,
            std,
            out_dim: d as u32,
            feature_layer: feature as i32,
            pinpoints,
            aspect_ratio: top.str_or("vision_aspect_ratio", "anyres_max_9").to_string(),
        },
    );
    for (_, g, ne, ty) in &vis_plan {
        v.add_tensor(g, *ty, ne).map_err(|e| e.to_string())?;
    }

    let llm_path = PathBuf::from(format!("{}-llm.gguf", opts.prefix.display()));
    let vis_path = PathBuf::from(format!("{}-mmproj.gguf", opts.prefix.display()));
    if let Some(parent) = llm_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let total = llm_plan.len() + vis_plan.len();
    let mut done = 0;
    for (plan, writer, path) in [(&llm_plan, w, &llm_path), (&vis_plan, v, &vis_path)] {
        let mut out = writer.create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (hf, g, ne, ty) in plan {
            progress(done, total, g);
            let values = cp.f32_values(hf)?;
            out.write_tensor(g, &encode_f32(&values, ne[0] as usize, *ty)).map_err(|e| format!("{}: {e}", path.display()))?;
            done += 1;
        }
        out.finish().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    progress(total, total, "");
    Ok(ConvertReport { llm: llm_path, mmproj: vis_path, tensors: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf_name(hf: &str) -> String {
        match map_name(hf) {
            Some(Target::Llm(n)) | Some(Target::Vision(n)) => n,
            Some(Target::Skip) => "skip".into(),
            None => "none".into(),
        }
    }

    #[test]
    fn both_checkpoint_layouts_map() {
        for (hf, gguf) in [
            ("language_model.model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("model.language_model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("language_model.lm_head.weight", "output.weight"),
            ("lm_head.weight", "output.weight"),
            ("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "v.blk.0.ffn_up.weight"),
            ("vision_tower.encoder.layers.25.self_attn.out_proj.bias", "v.blk.25.attn_out.bias"),
            ("model.vision_tower.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
            ("multi_modal_projector.linear_2.bias", "mm.2.bias"),
            ("model.image_newline", "model.image_newline"),
            ("image_newline", "model.image_newline"),
            ("vision_tower.vision_model.post_layernorm.weight", "skip"),
            ("vision_tower.vision_model.head.probe", "skip"),
            ("something.else", "none"),
        ] {
            assert_eq!(gguf_name(hf), gguf, "{hf}");
        }
    }
}
