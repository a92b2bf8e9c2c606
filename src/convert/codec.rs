//! Tensor data to and from F32, with ggml's own quantizers.

use crate::ggml::GgmlType;

/// Encodes rows of `n_per_row` F32 values as `ty`.
pub fn encode_f32(values: &[f32], n_per_row: usize, ty: GgmlType) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => crate::ggml::quantize_rows(ty, values, n_per_row),
    }
}

/// Reads any float or quantized tensor data as F32.
pub fn decode_to_f32(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    crate::ggml::dequantize(ty, data, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
