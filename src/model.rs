//! A loaded model: the language model and its tokenizer, shared read-only by every session.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, Setting};
use crate::ggml::{Device, DeviceKind};
use crate::gguf::GgufFile;
use crate::llm::qwen2::Qwen2;
use crate::tokenizer::Tokenizer;
use crate::vision::layout::VisionType;
use crate::vision::VisionModel;
use crate::weights::Placement;

/// How to load a model.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// The LLM GGUF (architecture `qwen2`).
    pub llm: PathBuf,
    /// The vision model GGUF (mmproj, architecture `clip`), for videos and images.
    pub mmproj: Option<PathBuf>,
    /// `cpu` (default), a GPU device name of a build with a GPU feature, or a device of an RPC
    /// server of `rpc` (`rpc0`, ...; see `devices()`). A comma-separated list of such devices
    /// divides the `gpu_layers` layers into equal runs over them, in order (the first holds the
    /// embeddings, the output, the vision tower and the KV cache).
    pub device: Option<String>,
    /// RPC servers (`HOST:PORT`, see `ggml::rpc`) whose devices are added before `device` is
    /// looked up. Each is checked to answer first; the first is `rpc0`.
    pub rpc: Vec<String>,
    /// Layers to place on the GPU (ignored on the CPU).
    pub gpu_layers: usize,
    /// With a device list: the share of the layers each device holds (llama.cpp's
    /// --tensor-split, `3,1`); empty: equal shares.
    pub tensor_split: Vec<f32>,
    /// Repack matrices into the CPU's faster layouts (llama.cpp does by default).
    pub repack: bool,
    /// The type the vision matrices are multiplied in (`VisionType::parse` checks a user's value):
    /// `Auto` (the default) picks the fastest measured layout for each stored type on this CPU.
    pub vision_type: VisionType,
}

impl ModelOptions {
    pub fn new(llm: impl Into<PathBuf>) -> ModelOptions {
        ModelOptions {
            llm: llm.into(),
            mmproj: None,
            device: None,
            rpc: Vec::new(),
            gpu_layers: 0,
            tensor_split: Vec::new(),
            repack: true,
            vision_type: VisionType::Auto,
        }
    }
}

/// The names of the compute devices of this build.
pub fn devices() -> Vec<String> {
    Device::all().iter().map(|d| d.name().to_ascii_lowercase()).collect()
}

/// Adds the devices of each RPC server (`HOST:PORT`) to this process's devices; returns their names.
pub fn add_rpc_servers(endpoints: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in endpoints {
        let endpoint = crate::ggml::rpc::Endpoint::parse(e)?;
        names.extend(crate::ggml::rpc::add_server(&endpoint)?.iter().map(|d| d.name().to_ascii_lowercase()));
    }
    Ok(names)
}

/// Resolves `ModelOptions::device`: one device, or a list of offload devices (the first, and the
/// others).
fn find_devices(names: Option<&str>) -> Result<(Device, Vec<Device>)> {
    let Some(list) = names.filter(|n| n.contains(',')) else { return Ok((find_device(names)?, Vec::new())) };
    let mut devices = Vec::new();
    for name in list.split(',').map(str::trim) {
        let d = find_device(Some(name))?;
        if d.kind() == DeviceKind::Cpu {
            return Err(Error::setting(Setting::Device, format!("{list:?}: a list names offload devices only (the CPU runs the rest)")));
        }
        if devices.contains(&d) {
            return Err(Error::setting(Setting::Device, format!("{list:?} names {name} twice")));
        }
        devices.push(d);
    }
    let first = devices.remove(0);
    Ok((first, devices))
}

/// Resolves a device name (`cpu`, `cuda0`, `rpc0`, ...).
pub fn find_device(name: Option<&str>) -> Result<Device> {
    match name {
        None => Ok(Device::cpu()),
        Some(n) if n.eq_ignore_ascii_case("cpu") => Ok(Device::cpu()),
        Some(n) => Device::by_name(n)
            .filter(|d| d.kind() != DeviceKind::Cpu)
            .ok_or_else(|| Error::Device { name: n.to_string(), available: devices().join(", ") }),
    }
}

pub struct Model {
    llm: Arc<Qwen2>,
    vision: Option<Arc<VisionModel>>,
    tokenizer: Tokenizer,
    device: Device,
    split: Vec<Device>,
    load_time: Duration,
}

impl Model {
    pub fn load(opts: &ModelOptions) -> Result<Arc<Model>> {
        crate::ggml::init();
        let start = Instant::now();
        add_rpc_servers(&opts.rpc)?;
        let (device, split) = find_devices(opts.device.as_deref())?;
        crate::weights::check_tensor_split(&opts.tensor_split, 1 + split.len())?;
        let file = Arc::new(GgufFile::open(&opts.llm)?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let placement = Placement { device, split: Vec::new(), gpu_layers: opts.gpu_layers, tensor_split: Vec::new(), repack: opts.repack };
        // Runs of layers are sized by the layers there are, not by a large -ngl.
        let n_layer = crate::llm::qwen2::Qwen2Params::from_gguf(&file)?.n_layer;
        let llm_placement = Placement { split: split.clone(), gpu_layers: opts.gpu_layers.min(n_layer), tensor_split: opts.tensor_split.clone(), ..placement.clone() };
        let llm = Arc::new(Qwen2::load(file.clone(), llm_placement)?);
        let n_vocab = llm.params().n_vocab;
        if tokenizer.n_vocab() > n_vocab {
            return Err(Error::Tokenizer(format!(
                "{}: the vocabulary has {} tokens but the embedding matrix only {} rows",
                opts.llm.display(),
                tokenizer.n_vocab(),
                n_vocab
            )));
        }
        let vision = match &opts.mmproj {
            None => None,
            Some(path) => {
                let v = VisionModel::load_with(path, placement, opts.vision_type)?;
                v.check_llm_width(llm.params().n_embd)?;
                Some(v)
            }
        };
        Ok(Arc::new(Model { llm, vision, tokenizer, device, split, load_time: start.elapsed() }))
    }

    pub fn llm(&self) -> &Arc<Qwen2> {
        &self.llm
    }

    /// The vision model, when one was loaded.
    pub fn vision(&self) -> Option<&Arc<VisionModel>> {
        self.vision.as_ref()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Further devices holding layers (see `ModelOptions::device`).
    pub fn split_devices(&self) -> &[Device] {
        &self.split
    }

    pub fn path(&self) -> &Path {
        self.llm.file().path()
    }

    /// Time spent in `load`.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }
}
