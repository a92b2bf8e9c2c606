//! Loading weights from a GGUF file into ggml tensors.
//!
//! On the CPU, weights are zero-copy: tensors point into the file mapping. The exceptions are
//! matrices whose type the CPU backend multiplies faster in a repacked layout (for example Q4_K and
//! Q4_0 with AVX2); like llama.cpp, those are copied once into the CPU's repack buffer, unless
//! repacking is turned off. Layers offloaded to a GPU are uploaded to its memory. A caller may ask
//! for matrices in another type than the file's (the vision tower widened to F32 where ggml
//! multiplies that faster): those are converted once at load into memory of their own, repacked
//! where ggml has a layout for the new type.

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
#[derive(Clone, Debug)]
pub struct Placement {
    pub device: Device,
    /// More devices that share the offloaded layers with `device` (llama.cpp's `--device A,B`):
    /// layers below `gpu_layers` are divided into equal runs over `device` and these, in order.
    /// Weights outside layers (embeddings, output) stay on `device`.
    pub split: Vec<Device>,
    /// Layers (numbered from 0) below this count go to `device` (and `split`) when it is a GPU.
    pub gpu_layers: usize,
    /// The shares of those layers `device` and each of `split` hold, in order (llama.cpp's
    /// --tensor-split); empty: equal shares. `check_tensor_split` validates it.
    pub tensor_split: Vec<f32>,
    /// Repack matrices into the CPU's faster layouts (costs a copy of those matrices).
    pub repack: bool,
}

impl Placement {
    pub fn cpu() -> Placement {
        Placement { device: Device::cpu(), split: Vec::new(), gpu_layers: 0, tensor_split: Vec::new(), repack: true }
    }

    /// The device that holds the weights of `layer` (None: weights outside layers), or None when
    /// they stay on the CPU.
    pub fn device_for(&self, layer: Option<usize>) -> Option<Device> {
        if self.device.kind() == DeviceKind::Cpu {
            return None;
        }
        match layer {
            None => (self.gpu_layers > 0).then_some(self.device),
            Some(l) if l < self.gpu_layers => {
                let run = run_of(l, self.gpu_layers, 1 + self.split.len(), &self.tensor_split);
                Some(if run == 0 { self.device } else { self.split[run - 1] })
            }
            Some(_) => None,
        }
    }
}

/// Which of `n` devices holds layer `l` of the first `gpu_layers`: with `shares` empty, equal runs;
/// otherwise llama.cpp's --tensor-split rule, where each device's run ends at its cumulative share
/// of the layers and a layer goes to the first device whose run ends above the layer's fraction.
fn run_of(l: usize, gpu_layers: usize, n: usize, shares: &[f32]) -> usize {
    if shares.is_empty() {
        return l * n / gpu_layers;
    }
    let total: f32 = shares.iter().sum();
    let fraction = l as f32 / gpu_layers as f32;
    let mut end = 0.0;
    for (i, share) in shares.iter().enumerate() {
        end += share / total;
        if fraction < end {
            return i;
        }
    }
    shares.len() - 1
}

/// The one check of a tensor split for `n_devices` devices: empty, or one finite, non-negative
/// share per device with a positive sum.
pub fn check_tensor_split(shares: &[f32], n_devices: usize) -> crate::error::Result<()> {
    use crate::error::{Error, Setting};
    if shares.is_empty() {
        return Ok(());
    }
    if shares.len() != n_devices {
        return Err(Error::setting(
            Setting::TensorSplit,
            format!("{} shares for {} offload device(s): give one per device of the --device list", shares.len(), n_devices),
        ));
    }
    if let Some(bad) = shares.iter().find(|s| !s.is_finite() || **s < 0.0) {
        return Err(Error::setting(Setting::TensorSplit, format!("{bad} is not a finite share of at least 0")));
    }
    if shares.iter().sum::<f32>() <= 0.0 {
        return Err(Error::setting(Setting::TensorSplit, "the shares add up to 0"));
    }
    Ok(())
}

#[cfg(test)]
mod split_tests {
    use super::run_of;

    fn runs(gpu_layers: usize, n: usize, shares: &[f32]) -> Vec<usize> {
        (0..gpu_layers).map(|l| run_of(l, gpu_layers, n, shares)).collect()
    }

    #[test]
    fn equal_shares_are_equal_runs() {
        assert_eq!(runs(6, 2, &[]), [0, 0, 0, 1, 1, 1]);
        assert_eq!(runs(6, 2, &[1.0, 1.0]), runs(6, 2, &[]));
        assert_eq!(runs(24, 3, &[2.0, 2.0, 2.0]), runs(24, 3, &[]));
    }

    #[test]
    fn shares_set_run_lengths() {
        assert_eq!(runs(8, 2, &[3.0, 1.0]), [0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(runs(4, 3, &[1.0, 0.0, 1.0]), [0, 0, 2, 2]);
        assert_eq!(runs(5, 2, &[0.0, 1.0]), [1; 5]);
    }
}

/// Where one matrix (a 2-D matrix-product weight) ended up, for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixPlacement {
    pub name: String,
    /// Its type in the file.
    pub file_type: GgmlType,
    /// The type it is multiplied in (differs from the file's when it was converted at load).
    pub ty: GgmlType,
    /// `mapped` (zero-copy in the file mapping), or the ggml buffer type holding it (`CPU` for a
    /// converted copy, `CPU_REPACK`, a GPU's).
    pub buffer: String,
}

/// The loaded weights: their contexts, which keep the mapping and buffers alive.
pub struct WeightStore {
    contexts: Vec<Context>,
    /// Bytes held outside the mapping (repacked, converted or uploaded copies), as held.
    pub copied_bytes: usize,
    /// Bytes used in place from the mapping.
    pub mapped_bytes: usize,
    /// Names of the buffer kinds used, for diagnostics.
    pub buffers: Vec<String>,
    /// Every matrix's placement, in declaration order.
    pub matrices: Vec<MatrixPlacement>,
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

/// The type a matrix of a given stored type is multiplied in (see `WeightLoader::convert_matrices`).
pub type MatrixTypeRule = Box<dyn Fn(GgmlType) -> GgmlType>;

/// Declares weights one by one (checking names, shapes and types), then loads them all.
pub struct WeightLoader {
    file: Arc<GgufFile>,
    placement: Placement,
    cpu: Device,
    repack_types: Vec<BufferType>,
    host: Group,
    /// Copies, one group per buffer type: repacked layouts and converted matrices in CPU memory,
    /// and uploads to each device (every device has a buffer type of its own).
    copied: Vec<Group>,
    convert: Option<MatrixTypeRule>,
    matrices: Vec<MatrixPlacement>,
}

impl WeightLoader {
    pub fn new(file: Arc<GgufFile>, placement: Placement) -> WeightLoader {
        let n = file.tensors().len() + 8;
        let cpu = Device::cpu();
        let repack_types = if placement.repack { cpu.extra_buffer_types() } else { Vec::new() };
        let host = Group { buft: BufferType::cpu(), ctx: Context::new(n, 0), items: Vec::new() };
        WeightLoader { file, placement, cpu, repack_types, host, copied: Vec::new(), convert: None, matrices: Vec::new() }
    }

    /// Matrices declared from now on are multiplied in `rule(stored type)`: where that differs from
    /// the file's type and ggml can convert to it with whole blocks per row, the matrix is converted
    /// once at load (dequantized to F32, then rounded or quantized by ggml's own routines); a matrix
    /// whose rows do not fit the new type's blocks keeps its stored type.
    pub fn convert_matrices(&mut self, rule: MatrixTypeRule) {
        self.convert = Some(rule);
    }

    /// The type a matrix stored as `info` is multiplied in.
    fn matrix_type(&self, info: &TensorInfo, usage: WeightUse) -> GgmlType {
        let Some(rule) = &self.convert else { return info.ty };
        if usage != WeightUse::Matmul || info.shape.len() != 2 {
            return info.ty;
        }
        converted_type(info.ty, rule(info.ty), info.shape[0])
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// A required weight with exactly `shape` (ggml order), for `layer` (None: not in a layer).
    pub fn tensor(&mut self, name: &str, shape: &[u64], usage: WeightUse, layer: Option<usize>) -> Result<Tensor> {
        let info = self.file.require_tensor(name, shape)?.clone();
        self.check_type(&info, usage)?;
        let ne: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let ty = self.matrix_type(&info, usage);
        // Weights on a device are uploaded to its memory; on the CPU, a converted matrix cannot
        // point into the file: it gets CPU memory of its own.
        let copy_to = match self.placement.device_for(layer) {
            Some(dev) => Some(dev.buffer_type()),
            None => self.repack_target(ty, &info, usage).or((ty != info.ty).then(BufferType::cpu)),
        };
        let n = self.file.tensors().len() + 8;
        let group = if let Some(buft) = copy_to {
            let pos = match self.copied.iter().position(|g| g.buft == buft) {
                Some(p) => p,
                None => {
                    self.copied.push(Group { buft, ctx: Context::new(n, 0), items: Vec::new() });
                    self.copied.len() - 1
                }
            };
            &mut self.copied[pos]
        } else {
            &mut self.host
        };
        let t = group.ctx.new_tensor(ty, &ne);
        group.ctx.set_name(&t, name);
        group.items.push((t.clone(), info.clone()));
        if usage == WeightUse::Matmul && info.shape.len() == 2 {
            let buffer = if copy_to.is_some() { group.buft.name() } else { "mapped".to_string() };
            self.matrices.push(MatrixPlacement { name: name.to_string(), file_type: info.ty, ty, buffer });
        }
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

    fn repack_target(&self, ty: GgmlType, info: &TensorInfo, usage: WeightUse) -> Option<BufferType> {
        if usage != WeightUse::Matmul || info.shape.len() != 2 {
            return None;
        }
        repack_buffer(&self.cpu, &self.repack_types, ty, [info.shape[0], info.shape[1]])
    }

    /// Allocates and fills every declared weight.
    pub fn finish(self) -> Result<WeightStore> {
        let WeightLoader { file, host, copied, matrices, .. } = self;
        let mut store = WeightStore { contexts: Vec::new(), copied_bytes: 0, mapped_bytes: 0, buffers: Vec::new(), matrices: Vec::new() };

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

        for group in copied {
            let buffer = group.buft.alloc_context_tensors(&group.ctx).ok_or_else(|| {
                file.error::<crate::gguf::Error>(GgufError::Io(std::io::Error::other(format!(
                    "could not allocate {} bytes of {} memory for the weights",
                    group.items.iter().map(|(t, _)| t.n_bytes()).sum::<usize>(),
                    group.buft.name()
                ))))
            })?;
            buffer.mark_weights();
            for (t, info) in &group.items {
                // For repack buffers, this is where ggml converts the layout.
                if t.ty() == info.ty {
                    t.write_bytes(file.tensor_data(info));
                } else {
                    write_converted(t, info.ty, file.tensor_data(info), info.shape[0] as usize);
                }
                store.copied_bytes += t.n_bytes();
            }
            store.buffers.push(group.buft.name());
            store.contexts.push(group.ctx);
        }
        store.matrices = matrices;
        Ok(store)
    }
}

/// The type a matrix stored as `stored`, with rows of `row_len` values, is multiplied in when `to`
/// is asked for: `to` when ggml can convert to it with whole blocks per row, else `stored`.
pub fn converted_type(stored: GgmlType, to: GgmlType, row_len: u64) -> GgmlType {
    if to != stored && to.row_bytes(row_len).is_some() && crate::ggml::can_quantize_to(to) {
        to
    } else {
        stored
    }
}

/// The repacked layout ggml multiplies a `ty` matrix of shape `ne` faster in, among `types`, if it
/// has one. ggml decides (every type its CPU backend can repack on this CPU qualifies), as in
/// llama.cpp.
fn repack_buffer(cpu: &Device, types: &[BufferType], ty: GgmlType, ne: [u64; 2]) -> Option<BufferType> {
    let ne = [ne[0] as i64, ne[1] as i64];
    types.iter().copied().find(|b| cpu.weight_buffer_supported(b, ty, ne))
}

/// The buffer a matrix of `ty` and shape `ne` would get on the CPU with repacking on: the repack
/// buffer's name, `CPU` for a converted copy, `mapped` for one used in place.
pub fn cpu_matrix_buffer(ty: GgmlType, ne: [u64; 2], converted: bool) -> String {
    let cpu = Device::cpu();
    match repack_buffer(&cpu, &cpu.extra_buffer_types(), ty, ne) {
        Some(b) => b.name(),
        None if converted => BufferType::cpu().name(),
        None => "mapped".into(),
    }
}

/// Fills `t` with a matrix stored as `from` (`data`, rows of `n_per_row` values), in `t`'s type:
/// decoded to F32 and encoded again by ggml's own routines. Both types hold whole blocks per row
/// (checked when the matrix was declared). The F32 scratch is one matrix (about 20 MB for
/// SigLIP-so400m's largest).
fn write_converted(t: &Tensor, from: GgmlType, data: &[u8], n_per_row: usize) {
    let row_in = from.row_bytes(n_per_row as u64).expect("whole blocks") as usize;
    let mut values = vec![0f32; data.len() / row_in * n_per_row];
    crate::ggml::dequantize(from, data, &mut values);
    if t.ty() == GgmlType::F32 {
        t.write_f32(&values);
    } else {
        t.write_bytes(&crate::ggml::quantize_rows(t.ty(), &values, n_per_row));
    }
}

