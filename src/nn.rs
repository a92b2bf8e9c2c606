//! Graph pieces shared by the models: norms, linear layers, feed-forward blocks, attention.

use crate::ggml::{Context, Tensor};

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

/// GELU with the tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, from exact
/// f32 operations. ggml's own `gelu` reads an FP16 table on the CPU, which is off by up to 1e-3.
pub fn gelu_tanh_precise(g: &mut Context, x: &Tensor) -> Tensor {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    let x2 = g.sqr(x);
    let inner = g.scale_bias(&x2, 0.044715 * C, C); // C (1 + 0.044715 x^2)
    let inner = g.mul(&inner, x);
    let t = g.tanh(&inner);
    let half = g.scale_bias(&t, 0.5, 0.5);
    g.mul(&half, x)
}
