//! Loading weights from a GGUF file into ggml tensors.
//!
//! On the CPU, weights are zero-copy: tensors point into the file mapping. The exceptions are
//! matrices whose type the CPU backend multiplies faster in a repacked layout (for example Q4_K and
//! Q4_0 with AVX2); like llama.cpp, those are copied once into the CPU's repack buffer, unless
//! repacking is turned off. Layers offloaded to a GPU are uploaded to its memory.

use std::sync::Arc;

use crate::error::Result;
use crate::ggml::{Buffer, BufferType, Context, Device, DeviceKind, Tensor};
use crate::ggml::GgmlType;
use crate::gguf::{GgufError, GgufFile, TensorInfo};

/// What a weight is used for, which decides the types it may have and where it may live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightUse {
    /// The first argument of a matrix multiplication: any float or quantized type.
    Matmul,
    /// Added or multiplied elementwise (norm weights, biases): F32.
    Vector,
    /// Used by an operation that needs exactly this type (for example the patch embedding).
    Exact(GgmlType),
}

/// Where weights go.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub device: Device,
    /// Layers (numbered from 0) below this count go to `device` when it is a GPU.
    pub gpu_layers: usize,
    /// Repack matrices into the CPU's faster layouts (costs a copy of those matrices).
    pub repack: bool,
}

impl Placement {
    pub fn cpu() -> Placement {
        Placement { device: Device::cpu(), gpu_layers: 0, repack: true }
    }
}

/// The loaded weights: their contexts, which keep the mapping and buffers alive.
pub struct WeightStore {
    contexts: Vec<Context>,
    /// Bytes copied out of the mapping (repacked or uploaded).
    pub copied_bytes: usize,
    /// Bytes used in place from the mapping.
    pub mapped_bytes: usize,
    /// Names of the buffer kinds used, for diagnostics.
    pub buffers: Vec<String>,
}

impl WeightStore {
    pub fn n_contexts(&self) -> usize {
        self.contexts.len()
    }
}

struct Group {
    buft: BufferType,
    ctx: Context,
    items: Vec<(Tensor, TensorInfo)>,
}

/// Declares weights one by one (checking names, shapes and types), then loads them all.
pub struct WeightLoader {
    file: Arc<GgufFile>,
    placement: Placement,
    cpu: Device,
    repack_types: Vec<BufferType>,
    host: Group,
    repacked: Vec<Group>,
    device: Option<Group>,
}

impl WeightLoader {
    pub fn new(file: Arc<GgufFile>, placement: Placement) -> WeightLoader {
        let n = file.tensors().len() + 8;
        let cpu = Device::cpu();
        let repack_types = if placement.repack { cpu.extra_buffer_types() } else { Vec::new() };
        let host = Group { buft: BufferType::cpu(), ctx: Context::new(n, 0), items: Vec::new() };
        WeightLoader { file, placement, cpu, repack_types, host, repacked: Vec::new(), device: None }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// A required weight with exactly `shape` (ggml order), for `layer` (None: not in a layer).
    pub fn tensor(&mut self, name: &str, shape: &[u64], usage: WeightUse, layer: Option<usize>) -> Result<Tensor> {
        let info = self.file.require_tensor(name, shape)?.clone();
        self.check_type(&info, usage)?;
        let on_gpu = self.placement.device.kind() != DeviceKind::Cpu
            && layer.map_or(self.placement.gpu_layers > 0, |l| l < self.placement.gpu_layers);
        let ne: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let group = if on_gpu {
            let dev = self.placement.device;
            self.device.get_or_insert_with(|| Group {
                buft: dev.buffer_type(),
                ctx: Context::new(self.file.tensors().len() + 8, 0),
                items: Vec::new(),
            })
        } else if let Some(buft) = self.repack_target(&info, usage) {
            let n = self.file.tensors().len() + 8;
            let pos = match self.repacked.iter().position(|g| g.buft == buft) {
                Some(p) => p,
                None => {
                    self.repacked.push(Group { buft, ctx: Context::new(n, 0), items: Vec::new() });
                    self.repacked.len() - 1
                }
            };
            &mut self.repacked[pos]
        } else {
            &mut self.host
        };
        let t = group.ctx.new_tensor(info.ty, &ne);
        group.ctx.set_name(&t, name);
        group.items.push((t.clone(), info));
        Ok(t)
    }

    /// An optional weight: None when the file does not have it.
    pub fn optional(&mut self, name: &str, shape: &[u64], usage: WeightUse, layer: Option<usize>) -> Result<Option<Tensor>> {
        if self.file.tensor(name).is_none() {
            return Ok(None);
        }
        self.tensor(name, shape, usage, layer).map(Some)
    }

    fn check_type(&self, info: &TensorInfo, usage: WeightUse) -> Result<()> {
        let ok = match usage {
            WeightUse::Matmul => {
                !matches!(info.ty, GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64 | GgmlType::F64 | GgmlType::Q8K | GgmlType::Q8_1)
                    && crate::ggml::can_dequantize(info.ty)
            }
            WeightUse::Vector => info.ty == GgmlType::F32,
            WeightUse::Exact(t) => info.ty == t,
        };
        if ok {
            return Ok(());
        }
        let expected = match usage {
            WeightUse::Matmul => "a float or quantized weight type".to_string(),
            WeightUse::Vector => "F32".to_string(),
            WeightUse::Exact(t) => t.to_string(),
        };
        Err(self.file.error(GgufError::TensorType { tensor: info.name.clone(), found: info.ty.to_string(), expected }))
    }

    fn repack_target(&self, info: &TensorInfo, usage: WeightUse) -> Option<BufferType> {
        if usage != WeightUse::Matmul || info.shape.len() != 2 {
            return None;
        }
        let ne = [info.shape[0] as i64, info.shape[1] as i64];
        self.repack_types.iter().copied().find(|b| self.cpu.weight_buffer_supported(b, info.ty, ne))
    }

    /// Allocates and fills every declared weight.
    pub fn finish(self) -> Result<WeightStore> {
        let WeightLoader { file, host, repacked, device, .. } = self;
        let mut store = WeightStore { contexts: Vec::new(), copied_bytes: 0, mapped_bytes: 0, buffers: Vec::new() };

        if !host.items.is_empty() {
            // One CPU buffer over the whole mapping (page-aligned base); tensors point into it.
            let bytes = file.file_bytes();
            let buffer = Buffer::from_host_memory(bytes).ok_or_else(|| {
                file.error::<crate::gguf::Error>(GgufError::Io(std::io::Error::other("ggml could not wrap the file mapping")))
            })?;
            for (t, info) in &host.items {
                buffer.place(t, (file.layout().data_offset + info.offset) as usize);
                store.mapped_bytes += info.size as usize;
            }
            host.ctx.keep_alive(buffer);
            host.ctx.keep_alive(file.clone());
            store.buffers.push("mapped".into());
            store.contexts.push(host.ctx);
        }

        for group in repacked.into_iter().chain(device) {
            let buffer = group.buft.alloc_context_tensors(&group.ctx).ok_or_else(|| {
                file.error::<crate::gguf::Error>(GgufError::Io(std::io::Error::other(format!(
                    "could not allocate {} bytes of {} memory for the weights",
                    group.items.iter().map(|(_, i)| i.size).sum::<u64>(),
                    group.buft.name()
                ))))
            })?;
            buffer.mark_weights();
            for (t, info) in &group.items {
                // For repack buffers, this is where ggml converts the layout.
                t.write_bytes(file.tensor_data(info));
                store.copied_bytes += info.size as usize;
            }
            store.buffers.push(group.buft.name());
            store.contexts.push(group.ctx);
        }
        Ok(store)
    }
}
