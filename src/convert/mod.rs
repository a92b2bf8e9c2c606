//! Hugging Face LLaVA-OneVision checkpoints (the llava-hf layout) to two GGUF files: the language
//! model (`qwen2`, as llama.cpp writes it, with the full tokenizer) and the vision model (an
//! mmproj-style `clip` file). `plan` reads the configuration and the safetensors headers and decides
//! every tensor's name, shape and type, checked against `layout`; `ConvertPlan::write` then streams
//! the tensors one at a time from the memory-mapped shards: the model is never held in memory.
//!
//! `layout` says what a LLaVA-OneVision GGUF pair holds and `codec` encodes tensor data; the
//! conversion here, and `gguf-tools`' quantizer and random models, build on those two.

pub mod codec;
pub mod layout;

use std::collections::HashSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::ggml::MappedFile;
use crate::ggml::GgmlType;
use crate::gguf::names::vision::Tensor as VisionTensor;
use crate::gguf::names::{qwen2, tokenizer as tok_keys};
use crate::gguf::{Array, GgufError, GgufWriter};
use serde_json::Value as Json;

use self::codec::{decode_to_f32, encode_f32};
use self::layout::{ClipMeta, Qwen2Meta};

/// Qwen2's ChatML template (string contents, default system prompt). The llava-hf template expects
/// contents as lists of typed parts; the engine builds media prompts with plain strings.
pub const QWEN2_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub input: PathBuf,
    /// Outputs are `{prefix}-llm.gguf` and `{prefix}-mmproj.gguf`.
    pub prefix: PathBuf,
    pub outtype: GgmlType,
    /// The vision matrices' type; None: `layout::default_vision_type(outtype)`.
    pub vision_type: Option<GgmlType>,
}

#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub llm: PathBuf,
    pub mmproj: PathBuf,
    pub tensors: usize,
}

/// Why a checkpoint does not convert; each names the file (and the tensor) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("unsupported output type {ty}; use one of {}", layout::type_list())]
    OutputType { ty: GgmlType },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON ({source})", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// A configuration, processor or tokenizer file lacks something or holds a bad value.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// A well-formed checkpoint of a model or variant this converter does not handle.
    #[error("{}: {problem}", path.display())]
    Unsupported { path: PathBuf, problem: String },
    #[error("{}: no model*.safetensors files", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{}: not a safetensors file ({source})", path.display())]
    Safetensors { path: PathBuf, source: safetensors::SafeTensorError },
    #[error("{}: tensor {tensor} lies outside the file", path.display())]
    TensorOutsideFile { path: PathBuf, tensor: String },
    #[error("{}: unexpected tensor {tensor} ({why})", path.display())]
    UnexpectedTensor { path: PathBuf, tensor: String, why: String },
    #[error("{}: tensors {first} and {second} both become {gguf}", path.display())]
    DuplicateTensor { path: PathBuf, first: String, second: String, gguf: String },
    #[error("{}: tensor {tensor} has type {dtype}; only F32, F16 and BF16 checkpoints convert", path.display())]
    TensorType { path: PathBuf, tensor: String, dtype: String },
    /// Shapes in the checkpoint's (PyTorch's) order.
    #[error("{}: tensor {tensor} has shape {found:?}, but config.json implies {expected:?}", path.display())]
    TensorShape { path: PathBuf, tensor: String, found: Vec<u64>, expected: Vec<u64> },
    #[error("{}: the checkpoint has no tensor for {tensor}", dir.display())]
    MissingTensor { dir: PathBuf, tensor: String },
    #[error("{}: {source}", path.display())]
    Gguf { path: PathBuf, source: GgufError },
}

pub type Result<T> = std::result::Result<T, ConvertError>;

fn invalid(path: &Path, problem: impl Into<String>) -> ConvertError {
    ConvertError::Invalid { path: path.to_path_buf(), problem: problem.into() }
}

fn unsupported(path: &Path, problem: impl Into<String>) -> ConvertError {
    ConvertError::Unsupported { path: path.to_path_buf(), problem: problem.into() }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io { path: path.to_path_buf(), source }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|source| ConvertError::Json { path: path.to_path_buf(), source })
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
    fn missing(&self, key: &str) -> ConvertError {
        invalid(self.file, format!("{}{key} is missing", self.section))
    }
    fn positive(&self, key: &str, v: &Json) -> Result<u32> {
        v.as_u64().filter(|&n| n > 0).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| invalid(self.file, format!("{}{key} is {v}, not a positive integer", self.section)))
    }
    fn uint(&self, key: &str) -> Result<u32> {
        self.positive(key, self.get(key).ok_or_else(|| self.missing(key))?)
    }
    fn uint_or(&self, key: &str, default: u32) -> Result<u32> {
        self.get(key).map_or(Ok(default), |v| self.positive(key, v))
    }
    fn float_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| invalid(self.file, format!("{}{key} is {v}, not a number", self.section))),
        }
    }
    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> &'b str {
        self.get(key).and_then(|v| v.as_str()).unwrap_or(default)
    }
    fn bool_or(&self, key: &str, default: bool) -> bool {
        self.get(key).and_then(|v| v.as_bool()).unwrap_or(default)
    }
}

/// Where a checkpoint tensor's bytes are.
#[derive(Clone, Debug)]
struct Source {
    shard: usize,
    dtype: safetensors::Dtype,
    /// PyTorch's order (the slowest dimension first).
    shape: Vec<u64>,
    bytes: Range<usize>,
}

/// The safetensors shards of a checkpoint, memory-mapped, with each tensor's location in the
/// order the shards store them.
struct Checkpoint {
    shards: Vec<(PathBuf, MappedFile)>,
    tensors: Vec<(String, Source)>,
}

fn open_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let j = read_json(&index)?;
        let map = j.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| invalid(&index, "no weight_map"))?;
        let mut f: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|s| dir.join(s)).collect();
        f.sort();
        f
    } else {
        let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_error(dir))?
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
        return Err(ConvertError::NoWeights { dir: dir.to_path_buf() });
    }
    files.dedup();
    let mut cp = Checkpoint { shards: Vec::new(), tensors: Vec::new() };
    for (i, path) in files.into_iter().enumerate() {
        let map = MappedFile::open(&path).map_err(io_error(&path))?;
        let (header, meta) = safetensors::SafeTensors::read_metadata(map.bytes()).map_err(|source| ConvertError::Safetensors { path: path.clone(), source })?;
        let base = 8 + header;
        let mut entries: Vec<_> = meta.tensors().into_iter().collect();
        entries.sort_by_key(|(_, info)| info.data_offsets.0);
        for (name, info) in entries {
            let bytes = base + info.data_offsets.0..base + info.data_offsets.1;
            if bytes.end > map.bytes().len() {
                return Err(ConvertError::TensorOutsideFile { path, tensor: name });
            }
            let shape = info.shape.iter().map(|&d| d as u64).collect();
            cp.tensors.push((name, Source { shard: i, dtype: info.dtype, shape, bytes }));
        }
        cp.shards.push((path, map));
    }
    Ok(cp)
}

/// The ggml type of a checkpoint's float data.
fn float_type(dtype: safetensors::Dtype) -> Option<GgmlType> {
    match dtype {
        safetensors::Dtype::F32 => Some(GgmlType::F32),
        safetensors::Dtype::F16 => Some(GgmlType::F16),
        safetensors::Dtype::BF16 => Some(GgmlType::Bf16),
        _ => None,
    }
}

impl Checkpoint {
    fn f32_values(&self, src: &Source) -> Vec<f32> {
        let bytes = &self.shards[src.shard].1.bytes()[src.bytes.clone()];
        // `plan` admitted only float types.
        let ty = float_type(src.dtype).unwrap_or(GgmlType::F32);
        decode_to_f32(ty, bytes, bytes.len() / ty.block_bytes() as usize)
    }
}

/// Where a checkpoint tensor goes.
#[derive(Clone, Debug, PartialEq)]
enum Destination {
    Llm(String),
    Vision(VisionTensor),
    /// Part of the checkpoint, not of the model LLaVA-OneVision runs.
    Unused,
}

/// Maps a checkpoint tensor name (llava-hf's old or transformers 5.x's layout) to its destination.
fn destination(hf: &str) -> Option<Destination> {
    // transformers 5.x prefixes the submodules with `model.`.
    let name = hf
        .strip_prefix("model.")
        .filter(|r| r.starts_with("language_model.") || r.starts_with("vision_tower.") || r.starts_with("multi_modal_projector.") || *r == "image_newline")
        .unwrap_or(hf);
    // The old layout nests the decoder in `language_model.model.` and the head in `language_model.`.
    let llm = name.strip_prefix("language_model.").map(|r| r.strip_prefix("model.").unwrap_or(r)).or((name == "lm_head.weight").then_some(name));
    if let Some(rest) = llm {
        return qwen2::from_hf(rest).map(Destination::Llm);
    }
    if let Some(rest) = name.strip_prefix("vision_tower.") {
        // The old layout nests the tower in `vision_model.`.
        let rest = rest.strip_prefix("vision_model.").unwrap_or(rest);
        // SigLIP's attention-pooling head: LLaVA-OneVision takes the patch features instead.
        if rest.starts_with("head.") {
            return Some(Destination::Unused);
        }
        return match VisionTensor::from_hf(&format!("vision_tower.{rest}"))? {
            // LLaVA-OneVision uses the last block's raw output.
            VisionTensor::PostLn(_) => Some(Destination::Unused),
            t => Some(Destination::Vision(t)),
        };
    }
    VisionTensor::from_hf(name).map(Destination::Vision)
}

/// One tensor of an output file: where its values come from and what it becomes.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    /// The checkpoint tensor.
    pub source: String,
    /// The shard that holds it.
    pub shard: PathBuf,
    /// The GGUF tensor.
    pub name: String,
    /// ggml's order (row length first).
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    data: Source,
}

/// One output file: its head (metadata and tensor table) and its tensors in the order written.
pub struct FilePlan {
    pub path: PathBuf,
    pub tensors: Vec<TensorPlan>,
    head: GgufWriter,
}

/// Everything a conversion writes, decided before the first byte is.
pub struct ConvertPlan {
    pub llm: FilePlan,
    pub mmproj: FilePlan,
    checkpoint: Checkpoint,
}

/// Checks the planned tensors against the layout's: each one expected, with its shape, and none
/// missing. `describe` names a missing tensor.
fn check_tensors(dir: &Path, planned: &[TensorPlan], expected: &[(String, Vec<u64>)], describe: impl Fn(&str) -> String) -> Result<()> {
    for t in planned {
        let Some((_, shape)) = expected.iter().find(|(n, _)| *n == t.name) else {
            let why = format!("{} is not part of the model config.json describes", t.name);
            return Err(ConvertError::UnexpectedTensor { path: t.shard.clone(), tensor: t.source.clone(), why });
        };
        if *shape != t.shape {
            let torch = |s: &[u64]| s.iter().rev().copied().collect();
            return Err(ConvertError::TensorShape { path: t.shard.clone(), tensor: t.source.clone(), found: torch(&t.shape), expected: torch(shape) });
        }
    }
    let present: HashSet<&str> = planned.iter().map(|t| t.name.as_str()).collect();
    match expected.iter().find(|(n, _)| !present.contains(n.as_str())) {
        Some((n, _)) => Err(ConvertError::MissingTensor { dir: dir.to_path_buf(), tensor: describe(n) }),
        None => Ok(()),
    }
}

fn add_tensors(head: &mut GgufWriter, path: &Path, tensors: &[TensorPlan]) -> Result<()> {
    for t in tensors {
        head.add_tensor(&t.name, t.ty, &t.shape).map_err(|source| ConvertError::Gguf { path: path.to_path_buf(), source })?;
    }
    Ok(())
}

/// Reads a checkpoint's configuration and tensor headers and plans both files.
pub fn plan(opts: &ConvertOptions) -> Result<ConvertPlan> {
    let vision_type = opts.vision_type.unwrap_or_else(|| layout::default_vision_type(opts.outtype));
    for ty in [opts.outtype, vision_type] {
        if !layout::TARGETS.contains(&ty) {
            return Err(ConvertError::OutputType { ty });
        }
    }
    let dir = &opts.input;
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let top = Cfg { json: &config, file: &config_path, section: "" };
    let model_type = top.str_or("model_type", "");
    if model_type != "llava_onevision" {
        return Err(unsupported(&config_path, format!("model_type is {model_type:?}; this converter handles LLaVA-OneVision checkpoints (\"llava_onevision\") only")));
    }
    let text = Cfg { json: top.get("text_config").ok_or_else(|| top.missing("text_config"))?, file: &config_path, section: "text_config." };
    let vision = Cfg { json: top.get("vision_config").ok_or_else(|| top.missing("vision_config"))?, file: &config_path, section: "vision_config." };
    if text.str_or("model_type", "qwen2") != "qwen2" {
        return Err(unsupported(&config_path, format!("text_config.model_type is {:?}; only Qwen2 language models convert", text.str_or("model_type", ""))));
    }
    if top.str_or("vision_feature_select_strategy", "full") != "full" {
        return Err(unsupported(&config_path, "vision_feature_select_strategy must be \"full\" (SigLIP has no CLS token)"));
    }
    if !matches!(top.str_or("projector_hidden_act", "gelu"), "gelu") {
        return Err(unsupported(&config_path, "projector_hidden_act must be \"gelu\""));
    }
    if vision.str_or("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh" {
        return Err(unsupported(&config_path, "vision_config.hidden_act must be \"gelu_pytorch_tanh\" (SigLIP)"));
    }

    let checkpoint = open_checkpoint(dir)?;
    let mut llm: Vec<TensorPlan> = Vec::new();
    let mut mmproj: Vec<TensorPlan> = Vec::new();
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (hf, src) in &checkpoint.tensors {
        let shard = checkpoint.shards[src.shard].0.clone();
        let destination = destination(hf).ok_or_else(|| ConvertError::UnexpectedTensor {
            path: shard.clone(),
            tensor: hf.clone(),
            why: "not part of a LLaVA-OneVision checkpoint".into(),
        })?;
        let (name, vision_side) = match destination {
            Destination::Unused => continue,
            Destination::Llm(name) => (name, false),
            Destination::Vision(t) => (t.name(), true),
        };
        if float_type(src.dtype).is_none() {
            return Err(ConvertError::TensorType { path: shard, tensor: hf.clone(), dtype: format!("{:?}", src.dtype) });
        }
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(ConvertError::DuplicateTensor { path: shard, first: first.to_string(), second: hf.clone(), gguf: name });
        }
        seen.push((name.clone(), hf));
        let shape: Vec<u64> = src.shape.iter().rev().copied().collect();
        let ty = if vision_side { layout::vision_storage_type(&name, &shape, vision_type) } else { layout::storage_type(&name, &shape, opts.outtype) };
        let t = TensorPlan { source: hf.clone(), shard, name, shape, ty, data: src.clone() };
        if vision_side { mmproj.push(t) } else { llm.push(t) }
    }

    // The language model.
    let n_vocab = llm.iter().find(|t| t.name == qwen2::TOKEN_EMBD).map(|t| t.shape[1]).ok_or_else(|| ConvertError::MissingTensor { dir: dir.clone(), tensor: qwen2::TOKEN_EMBD.into() })?;
    let has_output = llm.iter().any(|t| t.name == qwen2::OUTPUT);
    let tied = top.bool_or("tie_word_embeddings", text.bool_or("tie_word_embeddings", false));
    if tied {
        llm.retain(|t| t.name != qwen2::OUTPUT);
    }
    let n_head = text.uint("num_attention_heads")?;
    // transformers 5.x nests RoPE settings in rope_parameters; Qwen2Config's default base is 10000.
    let rope = text.get("rope_parameters").and_then(|r| r.get("rope_theta")).and_then(|v| v.as_f64());
    let meta = Qwen2Meta {
        n_ctx: text.uint("max_position_embeddings")?,
        n_embd: text.uint("hidden_size")?,
        n_layer: text.uint("num_hidden_layers")?,
        n_ff: text.uint("intermediate_size")?,
        n_head,
        n_head_kv: text.uint_or("num_key_value_heads", n_head)?,
        rope_freq_base: rope.map_or_else(|| text.float_or("rope_theta", 10000.0), Ok)? as f32,
        rms_eps: text.float_or("rms_norm_eps", 1e-6)? as f32,
        n_vocab: u32::try_from(n_vocab).map_err(|_| invalid(&config_path, format!("{n_vocab} embedding rows are too many")))?,
        // Without an output matrix the embedding matrix serves, as in llama.cpp.
        tied: tied || !has_output,
    };
    meta.check().map_err(|p| invalid(&config_path, format!("text_config: {p}")))?;
    let expected: Vec<(String, Vec<u64>)> = layout::qwen2_tensors(&meta).into_iter().map(|t| (t.name, t.shape)).collect();
    check_tensors(dir, &llm, &expected, |n| n.to_string())?;
    let mut head = GgufWriter::new();
    let name = format!("LLaVA-OneVision language model ({})", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    layout::write_qwen2_metadata(&mut head, &meta, &name, opts.outtype);
    tokenizer_keys(dir, n_vocab as usize, &mut head)?;
    let llm_path = PathBuf::from(format!("{}-llm.gguf", opts.prefix.display()));
    add_tensors(&mut head, &llm_path, &llm)?;
    let llm = FilePlan { path: llm_path, tensors: llm, head };

    // The vision model.
    let blocks = vision.uint("num_hidden_layers")?;
    let feature = match top.get("vision_feature_layer").and_then(|x| x.as_i64()).unwrap_or(-1) {
        n if n < 0 => i64::from(blocks) + 1 + n,
        n => n,
    };
    if feature < 1 || feature > i64::from(blocks) {
        return Err(invalid(&config_path, format!("vision_feature_layer selects layer {feature} of {blocks}")));
    }
    let (mean, std) = mean_std(dir)?;
    let pinpoints: Vec<i32> = top
        .get("image_grid_pinpoints")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().filter_map(|pair| pair.as_array()).flat_map(|pair| pair.iter().filter_map(|x| x.as_i64()).map(|x| x as i32)).collect())
        .unwrap_or_default();
    let clip = ClipMeta {
        image_size: vision.uint("image_size")?,
        patch_size: vision.uint("patch_size")?,
        hidden: vision.uint("hidden_size")?,
        ffn: vision.uint("intermediate_size")?,
        blocks,
        heads: vision.uint("num_attention_heads")?,
        eps: vision.float_or("layer_norm_eps", 1e-6)? as f32,
        mean,
        std,
        // The projector feeds the language model.
        out_dim: meta.n_embd,
        feature_layer: feature as i32,
        pinpoints,
        aspect_ratio: top.str_or("vision_aspect_ratio", "anyres_max_9").to_string(),
    };
    clip.check().map_err(|p| invalid(&config_path, format!("vision_config: {p}")))?;
    let expected: Vec<(String, Vec<u64>)> = clip.tensors().into_iter().map(|t| (t.name(), clip.shape(t))).collect();
    check_tensors(dir, &mmproj, &expected, |n| match VisionTensor::from_gguf(n) {
        Some(t) => format!("{n} ({})", t.hf_name()),
        None => n.to_string(),
    })?;
    let mut head = GgufWriter::new();
    layout::write_clip_metadata(&mut head, &clip);
    let mmproj_path = PathBuf::from(format!("{}-mmproj.gguf", opts.prefix.display()));
    add_tensors(&mut head, &mmproj_path, &mmproj)?;
    let mmproj = FilePlan { path: mmproj_path, tensors: mmproj, head };
    Ok(ConvertPlan { llm, mmproj, checkpoint })
}

impl ConvertPlan {
    /// Writes both files; `progress(done, total, tensor)` follows the tensors.
    pub fn write(self, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<ConvertReport> {
        if let Some(parent) = self.llm.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let total = self.llm.tensors.len() + self.mmproj.tensors.len();
        let report = ConvertReport { llm: self.llm.path.clone(), mmproj: self.mmproj.path.clone(), tensors: total };
        let mut done = 0;
        for file in [self.llm, self.mmproj] {
            let path = &file.path;
            let mut out = file.head.create(path).map_err(io_error(path))?;
            for t in &file.tensors {
                progress(done, total, &t.name);
                let values = self.checkpoint.f32_values(&t.data);
                out.write_tensor(&t.name, &encode_f32(&values, t.shape[0] as usize, t.ty)).map_err(io_error(path))?;
                done += 1;
            }
            out.finish().map_err(io_error(path))?;
        }
        progress(total, total, "");
        Ok(report)
    }
}

/// Converts a checkpoint: `plan`, then `ConvertPlan::write`.
pub fn convert(opts: &ConvertOptions, progress: &mut dyn FnMut(usize, usize, &str)) -> Result<ConvertReport> {
    plan(opts)?.write(progress)
}

/// The tokenizer of tokenizer.json, padded to `n_vocab` entries as llama.cpp's converter does.
fn tokenizer_keys(dir: &Path, n_vocab: usize, w: &mut GgufWriter) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let t = read_json(&path)?;
    let model = t.get("model").ok_or_else(|| invalid(&path, "no model section"))?;
    if model.get("type").and_then(|v| v.as_str()) != Some("BPE") {
        return Err(invalid(&path, "the tokenizer is not BPE (LLaVA-OneVision uses Qwen2's byte-level BPE)"));
    }
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![1i32; n_vocab];
    let vocab = model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| invalid(&path, "no vocab"))?;
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let id = id as usize;
        if id >= n_vocab {
            return Err(invalid(&path, format!("token {text:?} has id {id}, beyond the {n_vocab} embedding rows")));
        }
        tokens[id] = Some(text.to_string());
        types[id] = ty;
        Ok(())
    };
    for (text, id) in vocab {
        place(id.as_u64().ok_or_else(|| invalid(&path, format!("bad id of {text:?}")))?, text, 1)?;
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
        .ok_or_else(|| invalid(&path, "no merges"))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) if p.len() == 2 => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| invalid(&path, "merges must be strings or pairs of strings"))?;
    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    w.set_str(tok_keys::MODEL, "gpt2");
    w.set_str(tok_keys::PRE, "qwen2");
    w.set_array(tok_keys::TOKENS, Array::String(tokens.clone()));
    w.set_array(tok_keys::TOKEN_TYPE, Array::I32(types));
    w.set_array(tok_keys::MERGES, Array::String(merges));
    let eos = id_of("<|im_end|>").ok_or_else(|| invalid(&path, "no <|im_end|> token"))?;
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
fn mean_std(dir: &Path) -> Result<([f32; 3], [f32; 3])> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf_name(hf: &str) -> String {
        match destination(hf) {
            Some(Destination::Llm(n)) => n,
            Some(Destination::Vision(t)) => t.name(),
            Some(Destination::Unused) => "skip".into(),
            None => "none".into(),
        }
    }

    #[test]
    fn both_checkpoint_layouts_map() {
        for (hf, gguf) in [
            ("language_model.model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("model.language_model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight"),
            ("language_model.model.embed_tokens.weight", "token_embd.weight"),
            ("model.language_model.norm.weight", "output_norm.weight"),
            ("language_model.model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
            ("language_model.lm_head.weight", "output.weight"),
            ("lm_head.weight", "output.weight"),
            ("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "v.blk.0.ffn_up.weight"),
            ("vision_tower.encoder.layers.25.self_attn.out_proj.bias", "v.blk.25.attn_out.bias"),
            ("model.vision_tower.embeddings.patch_embedding.weight", "v.patch_embd.weight"),
            ("multi_modal_projector.linear_2.bias", "mm.2.bias"),
            ("model.multi_modal_projector.linear_1.weight", "mm.0.weight"),
            ("model.image_newline", "model.image_newline"),
            ("image_newline", "model.image_newline"),
            ("vision_tower.vision_model.post_layernorm.weight", "skip"),
            ("vision_tower.vision_model.head.probe", "skip"),
            ("something.else", "none"),
            ("language_model.model.layers.3.self_attn.rotary_emb.inv_freq", "none"),
            ("model.lm_head.weight", "none"),
        ] {
            assert_eq!(gguf_name(hf), gguf, "{hf}");
        }
    }
}
