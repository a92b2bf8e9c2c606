//! Quantization of GGUF files with ggml's own quantize functions.

use std::path::Path;

use dycoke::gguf::names::general;
use dycoke::ggml::GgmlType;
use dycoke::gguf::{GgufFile, GgufWriter, Value};

use crate::codec::{decode_to_f32, encode_f32};
use crate::layout::{file_type, storage_type, type_list, TARGETS};

/// Writes a copy of `input` with its weight matrices in `target` (others as `storage_type`).
/// Only float sources are accepted: re-quantizing quantized weights compounds errors.
pub fn quantize_file(input: &Path, output: &Path, target: GgmlType, mut progress: impl FnMut(usize, usize, &str)) -> Result<(), String> {
    if !TARGETS.contains(&target) {
        return Err(format!("unsupported target type {target}; use one of {}", type_list()));
    }
    let src = GgufFile::open(input).map_err(|e| e.to_string())?;
    if let Some(t) = src.tensors().iter().find(|t| !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)) {
        return Err(format!("{}: tensor {:?} is already {}; quantize from an F32, F16 or BF16 file", input.display(), t.name, t.ty));
    }
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k.clone(), v.clone());
    }
    w.set(general::FILE_TYPE, Value::U32(file_type(target)));
    w.set(general::QUANTIZATION_VERSION, Value::U32(2));
    let types: Vec<GgmlType> = src.tensors().iter().map(|t| storage_type(&t.name, &t.shape, target)).collect();
    for (t, &ty) in src.tensors().iter().zip(&types) {
        w.add_tensor(&t.name, ty, &t.shape).map_err(|e| e.to_string())?;
    }
    let mut out = w.create(output).map_err(|e| format!("{}: {e}", output.display()))?;
    let n = src.tensors().len();
    for (i, (t, &ty)) in src.tensors().iter().zip(&types).enumerate() {
        progress(i, n, &t.name);
        let values = decode_to_f32(t.ty, src.tensor_data(t), t.n_elements() as usize);
        let bytes = encode_f32(&values, t.shape[0] as usize, ty);
        out.write_tensor(&t.name, &bytes).map_err(|e| format!("{}: {e}", output.display()))?;
    }
    progress(n, n, "");
    out.finish().map_err(|e| format!("{}: {e}", output.display()))?;
    Ok(())
}
