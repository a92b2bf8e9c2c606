//! Custom CPU operations: computations ggml lacks or does imprecisely on the CPU.
//!
//! Each operation is a plain Rust function over slices (tested on its own) and a thin callback that
//! hands ggml's tensors to it. Custom operations run on the CPU backend; the scheduler places them
//! there whatever the other backends are.

use std::ffi::c_void;

use super::context::{Context, Tensor};
use super::sys;
use crate::gguf::GgmlType;

/// exp(t) for f32, branch-free so that the compiler vectorizes loops over it: t = n ln2 + r with
/// ln2 split in a high and a low part (Cody-Waite, so r keeps its precision), exp(r) for
/// |r| <= ln2/2 from a degree-7 polynomial, 2^n from the exponent bits. Relative error about 2e-7.
#[inline(always)]
fn exp_f32(t: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = t.clamp(-87.0, 88.0);
    let n = (t * std::f32::consts::LOG2_E + 0.5).floor();
    let r = t - n * LN2_HI - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// GELU with the tanh approximation, written as `x / (1 + exp(-2u))` (equal to
/// `0.5 x (1 + tanh(u))`), u = sqrt(2/pi) (x + 0.044715 x^3). Absolute error about 5e-7, as
/// PyTorch's f32 kernel; ggml's CPU `gelu` reads an FP16 table instead (error about 1e-3).
pub fn gelu_tanh(src: &[f32], dst: &mut [f32]) {
    const C: f32 = 0.797_884_6;
    for (d, &x) in dst.iter_mut().zip(src) {
        let u = C * (x + 0.044715 * x * x * x);
        *d = x / (1.0 + exp_f32(-2.0 * u));
    }
}

/// The callback of the tanh-GELU operation: each of `nth` threads takes a contiguous share.
unsafe extern "C" fn gelu_tanh_op(dst: *mut sys::ggml_tensor, a: *const sys::ggml_tensor, ith: i32, nth: i32, _user: *mut c_void) {
    // SAFETY: `Context::gelu_tanh_precise` built this node only for a contiguous F32 source, and
    // ggml allocates `dst` with the source's shape and type in host memory (custom operations run on
    // the CPU backend); both stay valid during the call. Threads write disjoint ranges of dst.
    unsafe {
        let n = sys::ggml_nelements(a) as usize;
        let per = n.div_ceil(nth.max(1) as usize);
        let start = (ith.max(0) as usize * per).min(n);
        let end = (start + per).min(n);
        let src = std::slice::from_raw_parts(((*a).data as *const f32).add(start), end - start);
        let out = std::slice::from_raw_parts_mut(((*dst).data as *mut f32).add(start), end - start);
        gelu_tanh(src, out);
    }
}

impl Context {
    /// Precise tanh-GELU (see `gelu_tanh`) of a contiguous F32 tensor, on the CPU.
    pub fn gelu_tanh_precise(&mut self, a: &Tensor) -> Tensor {
        assert!(a.ty() == GgmlType::F32 && a.is_contiguous(), "precise GELU of a non-contiguous or non-F32 tensor");
        let a_ptr = a.as_ptr();
        // SAFETY: the callback matches ggml_custom1_op_t and reads only what the SAFETY note above
        // describes; no user data.
        self.op(&[a], |c| unsafe { sys::ggml_map_custom1(c, a_ptr, Some(gelu_tanh_op), -1, std::ptr::null_mut()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    }

    #[test]
    fn gelu_tanh_is_accurate() {
        let xs: Vec<f32> = (-240_000..=240_000).map(|i| i as f32 / 20_000.0).collect();
        let mut ys = vec![0f32; xs.len()];
        gelu_tanh(&xs, &mut ys);
        let worst = xs.iter().zip(&ys).map(|(&x, &y)| (f64::from(y) - reference(f64::from(x))).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-6, "max abs error {worst:e}");
        let mut big = [0f32; 4];
        gelu_tanh(&[100.0, -100.0, 0.0, 1e30], &mut big);
        assert_eq!(big[0], 100.0);
        assert!(big[1].abs() < 1e-30, "gelu(-100) = {}", big[1]);
        assert_eq!(big[2], 0.0);
        assert_eq!(big[3], 1e30);
    }

    #[test]
    fn exp_is_accurate() {
        for i in -8600..=8800 {
            let t = i as f32 / 100.0;
            let rel = (f64::from(exp_f32(t)) - f64::from(t).exp()).abs() / f64::from(t).exp();
            assert!(rel < 5e-7, "exp({t}) relative error {rel:e}");
        }
    }
}
