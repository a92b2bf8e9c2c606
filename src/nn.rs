//! Graph pieces shared by the models: norms, linear layers, feed-forward blocks, attention.

use crate::ggml::{Context, Tensor};

/// Names a layer's intermediate `"{name}-{il}"` (llama.cpp's convention), so that graph listings
/// and activation dumps (`DYCOKE_DUMP_DIR`) can be compared with a reference layer by layer.
pub fn name_layer(g: &mut Context, t: &Tensor, name: &str, il: usize) {
    g.set_name(t, &format!("{name}-{il}"));
}

/// RMSNorm over the first dimension, then the learned scale (computed in F32, as HF and llama.cpp).
pub fn rms_norm(g: &mut Context, x: &Tensor, weight: &Tensor, eps: f32) -> Tensor {
    let n = g.rms_norm(x, eps);
    g.mul(&n, weight)
}

/// LayerNorm over the first dimension with a learned scale and shift.
pub fn layer_norm(g: &mut Context, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Tensor {
    let n = g.norm(x, eps);
    let n = g.mul(&n, weight);
    g.add(&n, bias)
}

/// `w x + b`: weight [in, out] (ggml order), x [in, n] -> [out, n].
pub fn linear(g: &mut Context, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let y = g.mul_mat(weight, x);
    match bias {
        Some(b) => g.add(&y, b),
        None => y,
    }
}

/// SwiGLU feed-forward: down(silu(gate x) * up x).
pub fn swiglu_ffn(g: &mut Context, x: &Tensor, gate: &Tensor, up: &Tensor, down: &Tensor) -> Tensor {
    let up_x = g.mul_mat(up, x);
    let gate_x = g.mul_mat(gate, x);
    let h = g.swiglu_split(&gate_x, &up_x);
    g.mul_mat(down, &h)
}

/// Multi-head attention with flash attention.
/// q: [head_dim, n_head, n_q]; k, v: [head_dim, n_kv, n_head_kv] (already permuted, F16 or
/// quantized); mask: [n_kv, n_q] F16 or None. Returns [head_dim * n_head, n_q].
pub fn flash_attention(g: &mut Context, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f32) -> Tensor {
    let q = g.permute(q, [0, 2, 1, 3]);
    let out = g.flash_attn_ext(&q, k, v, mask, scale);
    let ne = out.ne();
    g.reshape(&out, &[ne[0] * ne[1], ne[2] * ne[3]])
}

/// GELU with the tanh approximation, to f32 precision. ggml's own `gelu` reads an FP16 table on the
/// CPU (error about 1e-3), so this runs as a custom CPU operation (see `ggml::custom`).
pub fn gelu_tanh_precise(g: &mut Context, x: &Tensor) -> Tensor {
    g.gelu_tanh_precise(x)
}
