//! Custom CPU operations: computations ggml lacks or does imprecisely on the CPU.
//!
//! Each operation is a plain Rust function over slices (tested on its own) and a thin callback that
//! hands ggml's tensors to it. Custom operations run on the CPU backend; the scheduler places them
//! there whatever the other backends are.

use std::ffi::c_void;

use super::context::{Context, Tensor};
use super::sys;
use super::types::GgmlType;

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

// ---- host operations: a Rust object computing a node from its inputs -----------------------------

/// A read-only view of a custom operation's input (contiguous host memory).
pub struct OpInput<'a> {
    pub ne: [i64; 4],
    pub ty: GgmlType,
    bytes: &'a [u8],
}

impl<'a> OpInput<'a> {
    /// An I32 input over a slice (for testing operations without a graph).
    pub fn from_i32(ne: [i64; 4], data: &'a [i32]) -> OpInput<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        // SAFETY: the bytes of an i32 slice, borrowed for as long as the slice.
        let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        OpInput { ne, ty: GgmlType::I32, bytes }
    }

    pub fn len(&self) -> usize {
        self.ne.iter().product::<i64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn f32(&self) -> &[f32] {
        assert_eq!(self.ty, GgmlType::F32, "an F32 input was expected");
        // SAFETY: ggml's buffers are aligned (32 bytes) and the view covers len() F32 values.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast::<f32>(), self.len()) }
    }

    pub fn i32(&self) -> &[i32] {
        assert_eq!(self.ty, GgmlType::I32, "an I32 input was expected");
        // SAFETY: as above, len() I32 values.
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast::<i32>(), self.len()) }
    }
}

/// The output of a custom operation (contiguous host memory).
pub struct OpOutput<'a> {
    pub ne: [i64; 4],
    pub ty: GgmlType,
    bytes: &'a mut [u8],
}

impl<'a> OpOutput<'a> {
    /// An F16 output over a slice (for testing operations without a graph).
    pub fn from_f16(ne: [i64; 4], data: &'a mut [half::f16]) -> OpOutput<'a> {
        assert_eq!(ne.iter().product::<i64>() as usize, data.len());
        // SAFETY: the bytes of an f16 slice, borrowed mutably for as long as the slice.
        let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(data)) };
        OpOutput { ne, ty: GgmlType::F16, bytes }
    }

    pub fn len(&self) -> usize {
        self.ne.iter().product::<i64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn f32_mut(&mut self) -> &mut [f32] {
        assert_eq!(self.ty, GgmlType::F32);
        let n = self.len();
        // SAFETY: aligned ggml memory of n F32 values, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.bytes.as_mut_ptr().cast::<f32>(), n) }
    }

    pub fn i32_mut(&mut self) -> &mut [i32] {
        assert_eq!(self.ty, GgmlType::I32);
        let n = self.len();
        // SAFETY: as above, n I32 values.
        unsafe { std::slice::from_raw_parts_mut(self.bytes.as_mut_ptr().cast::<i32>(), n) }
    }

    pub fn f16_mut(&mut self) -> &mut [half::f16] {
        assert_eq!(self.ty, GgmlType::F16);
        let n = self.len();
        // SAFETY: as above, n F16 values (half::f16 is a u16).
        unsafe { std::slice::from_raw_parts_mut(self.bytes.as_mut_ptr().cast::<half::f16>(), n) }
    }
}

/// A graph node computed by Rust code on the host (one thread): DyCoke's selections run so.
pub trait HostOp: Send + Sync {
    fn run(&self, inputs: &[OpInput], output: &mut OpOutput);
}

struct HostOpBox(std::sync::Arc<dyn HostOp>);

unsafe extern "C" fn host_op_callback(dst: *mut sys::ggml_tensor, ith: i32, _nth: i32, user: *mut c_void) {
    if ith != 0 {
        return;
    }
    // SAFETY: `user` points to the HostOpBox that `Context::host_op` leaked into the context's
    // keep-alive list, alive as long as the graph. Inputs are the node's sources (checked contiguous
    // and allocated in host memory when the node was built: custom operations run on the CPU); the
    // output is the node itself. Only thread 0 runs, so the mutable view is unique.
    unsafe {
        let op = &*(user as *const HostOpBox);
        let mut inputs = Vec::new();
        for s in (*dst).src.iter().take_while(|s| !s.is_null()) {
            let t = &**s;
            let ty = GgmlType::from_id(t.type_).expect("known type");
            inputs.push(OpInput { ne: t.ne, ty, bytes: std::slice::from_raw_parts(t.data as *const u8, sys::ggml_nbytes(t)) });
        }
        let d = &*dst;
        let ty = GgmlType::from_id(d.type_).expect("known type");
        let mut output = OpOutput { ne: d.ne, ty, bytes: std::slice::from_raw_parts_mut(d.data as *mut u8, sys::ggml_nbytes(d)) };
        op.0.run(&inputs, &mut output);
    }
}

impl Context {
    /// A node of type `ty` and shape `ne` computed by `op` from `args` (contiguous tensors).
    pub fn host_op(&mut self, ty: GgmlType, ne: [i64; 4], args: &[&Tensor], op: std::sync::Arc<dyn HostOp>) -> Tensor {
        assert!(!args.is_empty() && args.len() <= 9, "host operation with {} inputs", args.len());
        assert!(args.iter().all(|a| a.is_contiguous()), "host operations read contiguous inputs");
        let boxed = std::sync::Arc::new(HostOpBox(op));
        let user = std::sync::Arc::as_ptr(&boxed) as *mut c_void;
        self.keep_alive(boxed);
        let mut ptrs: Vec<*mut sys::ggml_tensor> = args.iter().map(|t| t.as_ptr()).collect();
        // SAFETY: the callback's contract is above; `user` stays valid through the keep-alive list;
        // n_tasks = 1 (the host code is single-threaded).
        self.op(args, |c| unsafe {
            sys::ggml_custom_4d(c, ty.id(), ne[0], ne[1], ne[2], ne[3], ptrs.as_mut_ptr(), ptrs.len() as i32, Some(host_op_callback), 1, user)
        })
    }
}

// ---- gathering rows ------------------------------------------------------------------------------

unsafe extern "C" fn gather_rows_callback(dst: *mut sys::ggml_tensor, ith: i32, nth: i32, _user: *mut c_void) {
    // SAFETY: built by `Context::gather_rows`: src[0] is a matrix whose rows are contiguous and
    // nb[1] apart, src[1] a contiguous I32 vector of row numbers (checked below against the row
    // count), dst a contiguous [row, len(idx)] of src[0]'s type. Threads write disjoint rows.
    unsafe {
        let src = &*(*dst).src[0];
        let idx = &*(*dst).src[1];
        let d = &*dst;
        let row_bytes = d.nb[1];
        let n_idx = idx.ne[0] as usize;
        let rows = std::slice::from_raw_parts(idx.data as *const i32, n_idx);
        let per = n_idx.div_ceil(nth.max(1) as usize);
        let start = (ith.max(0) as usize * per).min(n_idx);
        let end = (start + per).min(n_idx);
        for (k, &r) in rows.iter().enumerate().take(end).skip(start) {
            let out = (d.data as *mut u8).add(k * row_bytes);
            if r < 0 || r as i64 >= src.ne[1] {
                // Not a row: zeros (a valid value in every type), for callers to mask.
                std::ptr::write_bytes(out, 0, row_bytes);
            } else {
                let from = (src.data as *const u8).add(r as usize * src.nb[1]);
                std::ptr::copy_nonoverlapping(from, out, row_bytes);
            }
        }
    }
}

impl Context {
    /// Rows `idx` (I32; a number outside the matrix gives a zero row) of a matrix `src` [row, n] of
    /// any type, copied as they are into a compact [row, len(idx)] of the same type: the gathered K
    /// or V of a sparse attention view.
    pub fn gather_rows(&mut self, src: &Tensor, idx: &Tensor) -> Tensor {
        assert_eq!(idx.ty(), GgmlType::I32);
        let row_bytes = src.ty().row_bytes(src.ne()[0] as u64).expect("whole blocks per row") as usize;
        assert!(src.nb()[0] == src.ty().block_bytes() as usize && src.nb()[1] >= row_bytes && idx.is_contiguous(), "rows must be contiguous");
        let ne = [src.ne()[0], idx.ne()[0], 1, 1];
        let mut ptrs = [src.as_ptr(), idx.as_ptr()];
        // SAFETY: the callback's contract is above; all threads share the rows.
        self.op(&[src, idx], |c| unsafe {
            sys::ggml_custom_4d(c, src.ty().id(), ne[0], ne[1], ne[2], ne[3], ptrs.as_mut_ptr(), 2, Some(gather_rows_callback), -1, std::ptr::null_mut())
        })
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
