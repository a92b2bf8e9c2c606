//! Quantization of GGUF files with ggml's own quantize functions.

use std::path::Path;

use dycoke::gguf::names::general;
use dycoke::ggml::GgmlType;
use dycoke::gguf::{GgufFile, GgufWriter, Value};

/// The types `quantize` and `convert` write weight matrices in.
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
    if name == "v.patch_embd.weight" {
        return GgmlType::F16;
    }
    if name == "v.position_embd.weight" || name.contains("image_newline") {
        return GgmlType::F32;
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

/// Encodes rows of `n_per_row` F32 values as `ty`.
pub fn encode_f32(values: &[f32], n_per_row: usize, ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => dycoke::ggml::quantize_rows(ty, values, n_per_row),
    }
}

/// Reads any float or quantized tensor data as F32.
pub fn decode_to_f32(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dycoke::ggml::dequantize(ty, data, &mut out);
    out
}

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
    w.set(general::FILE_TYPE, Value::U32(crate::random::file_type(target)));
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

pub fn type_list() -> String {
    TARGETS.iter().map(|t| t.name().to_ascii_lowercase()).collect::<Vec<_>>().join(", ")
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
    }

    #[test]
    fn quantized_rows_round_trip_closely() {
        let values: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
            let bytes = encode_f32(&values, 256, ty);
            assert_eq!(bytes.len() as u64, ty.row_bytes(512).unwrap());
            let back = decode_to_f32(ty, &bytes, 512);
            let max_err = values.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let bound = match ty {
                GgmlType::F16 => 2e-3,
                GgmlType::Q8_0 => 2e-2,
                _ => 0.25,
            };
            assert!(max_err < bound, "{ty}: max error {max_err}");
        }
    }
}
