//! ggml contexts, tensors and graphs behind a safe interface.
//!
//! A [`Tensor`] is a handle holding a weak reference to the [`Context`] that owns its struct; using a
//! handle whose context is gone panics instead of reading freed memory. A context keeps alive
//! whatever its tensors point into (other contexts used as sources, buffers, mappings), so a graph
//! can never outlive the weights it reads.
//!
//! ggml aborts the process on a failed assertion. Every operation here checks ggml's preconditions
//! first and panics with a message instead (a bug in our graph code, never a user input: user inputs
//! are validated before any graph is built).

use std::any::Any;
use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use super::sys;
use super::types::GgmlType;

pub(crate) struct ContextInner {
    ptr: NonNull<sys::ggml_context>,
    /// Things the tensors of this context point into or read from.
    keep_alive: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

// SAFETY: a ggml_context is plain memory owned by this struct. All operations that mutate it
// (creating tensors, setting names or flags) require `&mut Context`, and `Context` is not `Clone`,
// so there is never more than one mutator. Shared access only reads tensor structs.
unsafe impl Send for ContextInner {}
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ggml_init and is freed once, here.
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

/// A ggml context in no-alloc mode: it holds tensor and graph structs; data lives in backend buffers.
pub struct Context {
    inner: Arc<ContextInner>,
}

/// A handle to a tensor in some context.
#[derive(Clone)]
pub struct Tensor {
    ptr: NonNull<sys::ggml_tensor>,
    owner: Weak<ContextInner>,
}

// SAFETY: see ContextInner. Reading a tensor's struct fields from several threads is safe because
// the struct is only written through `&mut Context`, which exists once.
unsafe impl Send for Tensor {}
unsafe impl Sync for Tensor {}

/// ggml's `enum ggml_scale_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleMode {
    Nearest,
    Bilinear,
    Bicubic,
}

/// The RoPE parameters of `ggml_rope_ext`.
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub n_dims: i32,
    pub mode: i32,
    pub n_ctx_orig: i32,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
}

/// NeoX-style rotation (rotate_half), as Qwen2 uses.
// ggml.h's GGML_ROPE_TYPE_NEOX, a macro the bindings omit. tests/ops.rs checks the rotation it
// selects against a plain implementation of rotate_half.
pub const ROPE_TYPE_NEOX: i32 = 2;

fn check(cond: bool, message: impl FnOnce() -> String) {
    if !cond {
        panic!("ggml precondition failed: {}", message());
    }
}

impl Tensor {
    fn alive(&self) -> Arc<ContextInner> {
        self.owner.upgrade().expect("a ggml tensor was used after its context was dropped")
    }

    fn raw(&self) -> &sys::ggml_tensor {
        let _guard = self.alive();
        // SAFETY: the owning context is alive (checked above), and it owns this struct; shared
        // reads are fine (see the Send/Sync notes).
        unsafe { self.ptr.as_ref() }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_tensor {
        let _guard = self.alive();
        self.ptr.as_ptr()
    }

    pub(crate) fn owner(&self) -> Arc<ContextInner> {
        self.alive()
    }

    /// Dimensions in ggml order (fastest first), always four.
    pub fn ne(&self) -> [i64; 4] {
        self.raw().ne
    }

    /// Strides in bytes.
    pub fn nb(&self) -> [usize; 4] {
        self.raw().nb
    }

    pub fn ty(&self) -> GgmlType {
        let id = self.raw().type_;
        GgmlType::from_id(id).unwrap_or_else(|| panic!("tensor of unknown ggml type {id}"))
    }

    pub fn n_elements(&self) -> i64 {
        self.ne().iter().product()
    }

    pub fn n_bytes(&self) -> usize {
        // SAFETY: the tensor struct is valid (raw() checks the owner).
        unsafe { sys::ggml_nbytes(self.raw()) }
    }

    pub fn name(&self) -> String {
        let raw = self.raw();
        // SAFETY: ggml keeps `name` NUL-terminated within its fixed array.
        unsafe { CStr::from_ptr(raw.name.as_ptr()) }.to_string_lossy().into_owned()
    }

    pub fn is_contiguous(&self) -> bool {
        // SAFETY: the tensor struct is valid.
        unsafe { sys::ggml_is_contiguous(self.raw()) }
    }

    fn is_transposed(&self) -> bool {
        // SAFETY: the tensor struct is valid.
        unsafe { sys::ggml_is_transposed(self.raw()) }
    }

    /// Whether the tensor has memory (it was allocated in a buffer or by a scheduler).
    pub fn is_allocated(&self) -> bool {
        let raw = self.raw();
        !raw.buffer.is_null() || (!raw.view_src.is_null() && !raw.data.is_null())
    }

    /// Whether the tensor's memory is host memory (the CPU's buffers), so that reading or writing it
    /// moves nothing between devices. False for a tensor without memory.
    pub fn in_host_memory(&self) -> bool {
        let buffer = self.raw().buffer;
        // SAFETY: a non-null buffer of a live tensor.
        !buffer.is_null() && unsafe { sys::ggml_backend_buffer_is_host(buffer) }
    }

    fn check_io(&self, ty: GgmlType, len: usize, what: &str) {
        check(self.is_allocated(), || format!("{what} of tensor {:?} which has no memory", self.name()));
        check(self.ty() == ty, || format!("{what} of {ty} data on a {} tensor {:?}", self.ty(), self.name()));
        check(self.n_elements() as usize == len, || {
            format!("{what}: {len} elements for tensor {:?} of {}", self.name(), self.n_elements())
        });
        check(self.is_contiguous(), || format!("{what} of non-contiguous tensor {:?}", self.name()));
    }

    /// Copies raw bytes into the tensor (any type); `bytes` must be exactly its size.
    pub fn write_bytes(&self, bytes: &[u8]) {
        check(self.is_allocated(), || format!("write to tensor {:?} which has no memory", self.name()));
        check(bytes.len() == self.n_bytes(), || {
            format!("write of {} bytes to tensor {:?} of {} bytes", bytes.len(), self.name(), self.n_bytes())
        });
        // SAFETY: the tensor is allocated and the size matches its byte size.
        unsafe { sys::ggml_backend_tensor_set(self.as_ptr(), bytes.as_ptr().cast(), 0, bytes.len()) }
    }

    pub fn write_f32(&self, data: &[f32]) {
        self.check_io(GgmlType::F32, data.len(), "f32 write");
        // SAFETY: type, element count and contiguity checked above.
        unsafe { sys::ggml_backend_tensor_set(self.as_ptr(), data.as_ptr().cast(), 0, std::mem::size_of_val(data)) }
    }

    pub fn write_i32(&self, data: &[i32]) {
        self.check_io(GgmlType::I32, data.len(), "i32 write");
        // SAFETY: type, element count and contiguity checked above.
        unsafe { sys::ggml_backend_tensor_set(self.as_ptr(), data.as_ptr().cast(), 0, std::mem::size_of_val(data)) }
    }

    pub fn write_i64(&self, data: &[i64]) {
        self.check_io(GgmlType::I64, data.len(), "i64 write");
        // SAFETY: type, element count and contiguity checked above.
        unsafe { sys::ggml_backend_tensor_set(self.as_ptr(), data.as_ptr().cast(), 0, std::mem::size_of_val(data)) }
    }

    pub fn write_f16(&self, data: &[half::f16]) {
        self.check_io(GgmlType::F16, data.len(), "f16 write");
        // SAFETY: type, element count and contiguity checked above; half::f16 is a u16.
        unsafe { sys::ggml_backend_tensor_set(self.as_ptr(), data.as_ptr().cast(), 0, std::mem::size_of_val(data)) }
    }

    pub fn read_f32_into(&self, out: &mut [f32]) {
        self.check_io(GgmlType::F32, out.len(), "f32 read");
        // SAFETY: type, element count and contiguity checked above.
        unsafe { sys::ggml_backend_tensor_get(self.as_ptr(), out.as_mut_ptr().cast(), 0, std::mem::size_of_val(out)) }
    }

    pub fn read_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_elements() as usize];
        self.read_f32_into(&mut out);
        out
    }

    /// Reads a contiguous I32 tensor (row indices a graph computed).
    pub fn read_i32(&self) -> Vec<i32> {
        let mut out = vec![0i32; self.n_elements() as usize];
        self.check_io(GgmlType::I32, out.len(), "i32 read");
        // SAFETY: type, element count and contiguity checked above.
        unsafe { sys::ggml_backend_tensor_get(self.as_ptr(), out.as_mut_ptr().cast(), 0, std::mem::size_of_val(out.as_slice())) }
        out
    }

    /// Reads `out.len()` f32 values starting at element `start` of a contiguous F32 tensor.
    pub fn read_f32_range(&self, start: usize, out: &mut [f32]) {
        check(self.is_allocated() && self.ty() == GgmlType::F32 && self.is_contiguous(), || {
            format!("ranged f32 read of tensor {:?}", self.name())
        });
        check(start + out.len() <= self.n_elements() as usize, || {
            format!("read of {}..{} from tensor {:?} of {}", start, start + out.len(), self.name(), self.n_elements())
        });
        // SAFETY: checked above.
        unsafe {
            sys::ggml_backend_tensor_get(self.as_ptr(), out.as_mut_ptr().cast(), start * 4, std::mem::size_of_val(out))
        }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.owner.upgrade() {
            Some(_) => write!(f, "Tensor({:?} {} {:?})", self.name(), self.ty(), self.ne()),
            None => write!(f, "Tensor(<dropped>)"),
        }
    }
}

/// A computation graph, living in a context.
pub struct Graph {
    ptr: NonNull<sys::ggml_cgraph>,
    owner: Arc<ContextInner>,
}

// SAFETY: the graph struct lives in its context's memory, which `owner` keeps alive; it is only
// mutated through `&mut Graph`.
unsafe impl Send for Graph {}

impl Graph {
    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }

    pub(super) fn n_nodes(&self) -> usize {
        // SAFETY: the graph is valid while `owner` lives.
        unsafe { sys::ggml_graph_n_nodes(self.ptr.as_ptr()) as usize }
    }

    /// Node `i` (below `n_nodes`), for the scheduler's assignments.
    pub(super) fn node(&self, i: usize) -> *mut sys::ggml_tensor {
        assert!(i < self.n_nodes(), "node {i} of a graph of {}", self.n_nodes());
        // SAFETY: the index is in range; the graph is valid while `owner` lives.
        unsafe { sys::ggml_graph_node(self.ptr.as_ptr(), i as i32) }
    }

    /// Names and shapes of the nodes whose names start with `prefix` (to inspect what was built).
    pub fn named_nodes(&self, prefix: &str) -> Vec<(String, [i64; 4])> {
        let mut out = Vec::new();
        for i in 0..self.n_nodes() {
            // SAFETY: i < n_nodes; nodes live in the context `owner` keeps alive; ggml keeps names
            // NUL-terminated.
            let (name, ne) = unsafe {
                let t = &*sys::ggml_graph_node(self.ptr.as_ptr(), i as i32);
                (CStr::from_ptr(t.name.as_ptr()).to_string_lossy().into_owned(), t.ne)
            };
            if name.starts_with(prefix) {
                out.push((name, ne));
            }
        }
        out
    }

    /// Adds `t` and everything it depends on to the graph.
    pub fn expand(&mut self, t: &Tensor) {
        check(Arc::ptr_eq(&t.owner(), &self.owner) || self.knows(t), || {
            format!("tensor {:?} from an unrelated context added to a graph", t.name())
        });
        // SAFETY: both structs are alive; the graph was sized by its creator (ggml asserts on
        // overflow, so creators size graphs from the node count of the model).
        unsafe { sys::ggml_build_forward_expand(self.ptr.as_ptr(), t.as_ptr()) }
    }

    fn knows(&self, t: &Tensor) -> bool {
        let target = t.owner();
        self.owner.keep_alive.lock().unwrap().iter().any(|k| {
            k.clone().downcast::<ContextInner>().is_ok_and(|c| Arc::ptr_eq(&c, &target))
        })
    }
}

impl Context {
    /// A no-alloc context able to hold `n_tensors` tensor structs and one graph of `graph_nodes`
    /// nodes (0 for none).
    pub fn new(n_tensors: usize, graph_nodes: usize) -> Context {
        // SAFETY: plain size queries.
        let mut mem = n_tensors * unsafe { sys::ggml_tensor_overhead() };
        if graph_nodes > 0 {
            // SAFETY: plain size query.
            mem += unsafe { sys::ggml_graph_overhead_custom(graph_nodes, false) };
        }
        let params = sys::ggml_init_params { mem_size: mem.max(1024), mem_buffer: std::ptr::null_mut(), no_alloc: true };
        // SAFETY: ggml_init allocates its own memory for the given size; null only on OOM.
        let ptr = unsafe { sys::ggml_init(params) };
        let ptr = NonNull::new(ptr).expect("ggml_init failed (out of memory)");
        Context { inner: Arc::new(ContextInner { ptr, keep_alive: Mutex::new(Vec::new()) }) }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_context {
        self.inner.ptr.as_ptr()
    }

    /// Keeps `thing` alive as long as this context (its tensors point into it).
    pub fn keep_alive(&self, thing: Arc<dyn Any + Send + Sync>) {
        self.inner.keep_alive.lock().unwrap().push(thing);
    }

    /// Records that this context's tensors read from `t`'s context.
    fn adopt(&self, t: &Tensor) {
        let other = t.owner();
        if Arc::ptr_eq(&other, &self.inner) {
            return;
        }
        let mut kept = self.inner.keep_alive.lock().unwrap();
        let known = kept.iter().any(|k| k.clone().downcast::<ContextInner>().is_ok_and(|c| Arc::ptr_eq(&c, &other)));
        if !known {
            kept.push(other);
        }
    }

    fn wrap(&self, ptr: *mut sys::ggml_tensor) -> Tensor {
        let ptr = NonNull::new(ptr).expect("ggml returned no tensor (context full: it was sized too small)");
        Tensor { ptr, owner: Arc::downgrade(&self.inner) }
    }

    fn room_for_tensor(&self) {
        // SAFETY: size queries on a live context.
        let (used, size, overhead) = unsafe {
            (
                sys::ggml_used_mem(self.as_ptr()),
                sys::ggml_get_mem_size(self.as_ptr()),
                sys::ggml_tensor_overhead(),
            )
        };
        check(used + overhead <= size, || format!("ggml context full ({used} of {size} bytes used)"));
    }

    pub fn new_tensor(&mut self, ty: GgmlType, ne: &[i64]) -> Tensor {
        check(!ne.is_empty() && ne.len() <= 4, || format!("tensor of {} dimensions", ne.len()));
        check(ne.iter().all(|&d| d >= 0), || format!("negative dimension in {ne:?}"));
        check(ne[0] % ty.block_size() as i64 == 0, || format!("row of {} elements for {ty}", ne[0]));
        self.room_for_tensor();
        // SAFETY: checked dimensions, type from our table, room in the context.
        let p = unsafe { sys::ggml_new_tensor(self.as_ptr(), ty.id(), ne.len() as i32, ne.as_ptr()) };
        self.wrap(p)
    }

    pub fn set_name(&mut self, t: &Tensor, name: &str) {
        check(Arc::ptr_eq(&t.owner(), &self.inner), || "naming a tensor of another context".into());
        let c = CString::new(name.replace('\0', "")).unwrap_or_default();
        // SAFETY: the tensor belongs to this context, which we hold mutably; ggml truncates names.
        unsafe { sys::ggml_set_name(t.as_ptr(), c.as_ptr()) };
    }

    /// Marks a graph input (its data is set before each compute).
    pub fn set_input(&mut self, t: &Tensor) {
        check(Arc::ptr_eq(&t.owner(), &self.inner), || "flagging a tensor of another context".into());
        // SAFETY: as in set_name.
        unsafe { sys::ggml_set_input(t.as_ptr()) }
    }

    /// Marks a graph output (the allocator keeps its memory until the end of the compute).
    pub fn set_output(&mut self, t: &Tensor) {
        check(Arc::ptr_eq(&t.owner(), &self.inner), || "flagging a tensor of another context".into());
        // SAFETY: as in set_name.
        unsafe { sys::ggml_set_output(t.as_ptr()) }
    }

    /// A new input tensor, named and flagged.
    pub fn input(&mut self, name: &str, ty: GgmlType, ne: &[i64]) -> Tensor {
        let t = self.new_tensor(ty, ne);
        self.set_name(&t, name);
        self.set_input(&t);
        t
    }

    pub fn new_graph(&mut self, max_nodes: usize) -> Graph {
        // SAFETY: the context was sized for a graph by its creator; ggml asserts when it is not, so
        // check the room first.
        let need = unsafe { sys::ggml_graph_overhead_custom(max_nodes, false) };
        let (used, size) = unsafe { (sys::ggml_used_mem(self.as_ptr()), sys::ggml_get_mem_size(self.as_ptr())) };
        check(used + need <= size, || format!("no room for a graph of {max_nodes} nodes"));
        // SAFETY: room checked.
        let p = unsafe { sys::ggml_new_graph_custom(self.as_ptr(), max_nodes, false) };
        Graph { ptr: NonNull::new(p).expect("ggml_new_graph_custom"), owner: self.inner.clone() }
    }

    // ---- operations -------------------------------------------------------------------------

    pub(super) fn op(&mut self, srcs: &[&Tensor], f: impl FnOnce(*mut sys::ggml_context) -> *mut sys::ggml_tensor) -> Tensor {
        for s in srcs {
            self.adopt(s);
        }
        self.room_for_tensor();
        let p = f(self.as_ptr());
        self.wrap(p)
    }

    /// Rows `idx` (I32) of `a`: [n, rows...] -> [n, len(idx)].
    pub fn get_rows(&mut self, a: &Tensor, idx: &Tensor) -> Tensor {
        check(idx.ty() == GgmlType::I32, || "get_rows index must be I32".into());
        check(a.ne()[2] == idx.ne()[1] && idx.ne()[3] == 1, || format!("get_rows {:?} by {:?}", a.ne(), idx.ne()));
        // SAFETY: shapes and types checked; both tensors alive.
        self.op(&[a, idx], |c| unsafe { sys::ggml_get_rows(c, a.as_ptr(), idx.as_ptr()) })
    }

    /// `a` converted to `ty` (a copy, on whichever backend runs it).
    pub fn cast(&mut self, a: &Tensor, ty: GgmlType) -> Tensor {
        // SAFETY: `a` alive; ggml_cast only records the conversion (the scheduler picks a backend
        // that supports it).
        self.op(&[a], |c| unsafe { sys::ggml_cast(c, a.as_ptr(), ty.id()) })
    }

    /// Writes rows of `src` into `dst` at rows `idx` (I64 or I32); returns the updated view of dst.
    pub fn set_rows(&mut self, dst: &Tensor, src: &Tensor, idx: &Tensor) -> Tensor {
        check(matches!(idx.ty(), GgmlType::I64 | GgmlType::I32), || "set_rows index must be I64 or I32".into());
        check(dst.ne()[0] == src.ne()[0] && src.ne()[1] == idx.ne()[0], || {
            format!("set_rows into {:?} from {:?} by {:?}", dst.ne(), src.ne(), idx.ne())
        });
        check(src.ty() == GgmlType::F32, || "set_rows source must be F32".into());
        // SAFETY: checked.
        self.op(&[dst, src, idx], |c| unsafe { sys::ggml_set_rows(c, dst.as_ptr(), src.as_ptr(), idx.as_ptr()) })
    }

    /// a: [k, m, ...], b: [k, n, ...] -> [m, n, ...] (a's rows dotted with b's rows).
    pub fn mul_mat(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        let (an, bn) = (a.ne(), b.ne());
        check(an[0] == bn[0] && bn[2] % an[2] == 0 && bn[3] % an[3] == 0, || format!("mul_mat {an:?} x {bn:?}"));
        check(!a.is_transposed(), || "mul_mat with a transposed first argument".into());
        // SAFETY: checked (ggml_can_mul_mat and !is_transposed).
        self.op(&[a, b], |c| unsafe { sys::ggml_mul_mat(c, a.as_ptr(), b.as_ptr()) })
    }

    fn can_repeat(b: &Tensor, a: &Tensor) -> bool {
        let (an, bn) = (a.ne(), b.ne());
        (0..4).all(|i| bn[i] != 0 && an[i] % bn[i] == 0)
    }

    /// a + b, b broadcast over a.
    pub fn add(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        check(Self::can_repeat(b, a), || format!("add {:?} + {:?}", a.ne(), b.ne()));
        // SAFETY: broadcast shape checked.
        self.op(&[a, b], |c| unsafe { sys::ggml_add(c, a.as_ptr(), b.as_ptr()) })
    }

    /// a * b elementwise, b broadcast over a.
    pub fn mul(&mut self, a: &Tensor, b: &Tensor) -> Tensor {
        check(Self::can_repeat(b, a), || format!("mul {:?} * {:?}", a.ne(), b.ne()));
        // SAFETY: broadcast shape checked.
        self.op(&[a, b], |c| unsafe { sys::ggml_mul(c, a.as_ptr(), b.as_ptr()) })
    }

    pub fn rms_norm(&mut self, a: &Tensor, eps: f32) -> Tensor {
        // SAFETY: normalises along ne0; any shape.
        self.op(&[a], |c| unsafe { sys::ggml_rms_norm(c, a.as_ptr(), eps) })
    }

    pub fn norm(&mut self, a: &Tensor, eps: f32) -> Tensor {
        // SAFETY: normalises along ne0; any shape.
        self.op(&[a], |c| unsafe { sys::ggml_norm(c, a.as_ptr(), eps) })
    }

    /// Rotary embedding of a [head_dim, n_head, n_tokens] tensor at positions `pos` (I32, n_tokens).
    pub fn rope_ext(&mut self, a: &Tensor, pos: &Tensor, p: &RopeParams) -> Tensor {
        check(pos.ty() == GgmlType::I32 && pos.ne()[0] == a.ne()[2], || {
            format!("rope of {:?} at positions {:?}", a.ne(), pos.ne())
        });
        check(p.n_dims > 0 && p.n_dims as i64 <= a.ne()[0] && p.n_dims % 2 == 0, || format!("rope n_dims {}", p.n_dims));
        // SAFETY: checked.
        self.op(&[a, pos], |c| unsafe {
            sys::ggml_rope_ext(
                c,
                a.as_ptr(),
                pos.as_ptr(),
                std::ptr::null_mut(),
                p.n_dims,
                p.mode,
                p.n_ctx_orig,
                p.freq_base,
                p.freq_scale,
                p.ext_factor,
                p.attn_factor,
                p.beta_fast,
                p.beta_slow,
            )
        })
    }

    /// Fused attention. q: [d, n_q, n_head, 1]; k, v: [d, n_kv, n_head_kv, 1] (F16);
    /// mask: [n_kv, n_q] F16 or none. Result: [d, n_head, n_q, 1]. Accumulates in F32.
    pub fn flash_attn_ext(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f32) -> Tensor {
        let (qn, kn, vn) = (q.ne(), k.ne(), v.ne());
        check(qn[0] == kn[0] && kn[1] == vn[1] && kn[2] == vn[2] && kn[2] > 0 && qn[2] % kn[2] == 0, || {
            format!("flash_attn_ext q {qn:?} k {kn:?} v {vn:?}")
        });
        if let Some(m) = mask {
            let mn = m.ne();
            check(m.ty() == GgmlType::F16 && mn[0] == kn[1] && mn[1] >= qn[1], || {
                format!("flash_attn_ext mask {mn:?} ({}) for k {kn:?} q {qn:?}", m.ty())
            });
        }
        let mut srcs = vec![q, k, v];
        if let Some(m) = mask {
            srcs.push(m);
        }
        let mp = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: shapes checked as ggml_flash_attn_ext asserts them.
        let out = self.op(&srcs, |c| unsafe { sys::ggml_flash_attn_ext(c, q.as_ptr(), k.as_ptr(), v.as_ptr(), mp, scale, 0.0, 0.0) });
        // SAFETY: `out` is a flash-attention node just created.
        unsafe { sys::ggml_prec_set_acc(out.as_ptr(), sys::GGML_PREC_F32) };
        out
    }

    /// softmax(a * scale + mask) along ne0. mask: F32 or F16 [ne0, >= ne1].
    pub fn soft_max_ext(&mut self, a: &Tensor, mask: Option<&Tensor>, scale: f32) -> Tensor {
        if let Some(m) = mask {
            check(m.ne()[0] == a.ne()[0] && m.ne()[1] >= a.ne()[1], || format!("soft_max mask {:?} for {:?}", m.ne(), a.ne()));
        }
        let mp = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        let mut srcs = vec![a];
        if let Some(m) = mask {
            srcs.push(m);
        }
        // SAFETY: mask shape checked.
        self.op(&srcs, |c| unsafe { sys::ggml_soft_max_ext(c, a.as_ptr(), mp, scale, 0.0) })
    }

    fn check_reshape(a: &Tensor, ne: &[i64]) {
        check(a.is_contiguous(), || format!("reshape of non-contiguous {:?}", a.ne()));
        check(ne.iter().product::<i64>() == a.n_elements(), || format!("reshape {:?} to {ne:?}", a.ne()));
    }

    pub fn reshape(&mut self, a: &Tensor, ne: &[i64]) -> Tensor {
        Self::check_reshape(a, ne);
        // SAFETY: contiguous and element count equal.
        self.op(&[a], |c| unsafe {
            match ne.len() {
                1 => sys::ggml_reshape_1d(c, a.as_ptr(), ne[0]),
                2 => sys::ggml_reshape_2d(c, a.as_ptr(), ne[0], ne[1]),
                3 => sys::ggml_reshape_3d(c, a.as_ptr(), ne[0], ne[1], ne[2]),
                4 => sys::ggml_reshape_4d(c, a.as_ptr(), ne[0], ne[1], ne[2], ne[3]),
                n => panic!("reshape to {n} dimensions"),
            }
        })
    }

    /// A strided view of `a`: `ne` dims, `nb` strides for dims 1.., starting `offset` bytes in.
    pub fn view(&mut self, a: &Tensor, ne: &[i64], nb: &[usize], offset: usize) -> Tensor {
        check(!ne.is_empty() && ne.len() <= 4 && nb.len() + 1 == ne.len(), || format!("view ne {ne:?} nb {nb:?}"));
        // The last byte the view touches must lie inside a's data.
        let ty = a.ty();
        let row = ty.row_bytes(ne[0] as u64).unwrap_or(u64::MAX) as usize;
        let extent = ne.iter().skip(1).zip(nb).map(|(&n, &s)| (n.max(1) as usize - 1) * s).sum::<usize>() + row;
        check(ne.iter().all(|&n| n > 0) && offset + extent <= a.n_bytes(), || {
            format!("view ne {ne:?} nb {nb:?} at {offset} outside {:?} ({} bytes)", a.ne(), a.n_bytes())
        });
        // SAFETY: the view lies inside a's data (checked above).
        self.op(&[a], |c| unsafe {
            match ne.len() {
                1 => sys::ggml_view_1d(c, a.as_ptr(), ne[0], offset),
                2 => sys::ggml_view_2d(c, a.as_ptr(), ne[0], ne[1], nb[0], offset),
                3 => sys::ggml_view_3d(c, a.as_ptr(), ne[0], ne[1], ne[2], nb[0], nb[1], offset),
                _ => sys::ggml_view_4d(c, a.as_ptr(), ne[0], ne[1], ne[2], ne[3], nb[0], nb[1], nb[2], offset),
            }
        })
    }

    pub fn permute(&mut self, a: &Tensor, axes: [i32; 4]) -> Tensor {
        let mut sorted = axes;
        sorted.sort();
        check(sorted == [0, 1, 2, 3], || format!("permute {axes:?}"));
        // SAFETY: axes form a permutation.
        self.op(&[a], |c| unsafe { sys::ggml_permute(c, a.as_ptr(), axes[0], axes[1], axes[2], axes[3]) })
    }

    pub fn cont(&mut self, a: &Tensor) -> Tensor {
        // SAFETY: any tensor.
        self.op(&[a], |c| unsafe { sys::ggml_cont(c, a.as_ptr()) })
    }

    /// Exact (erf) GELU.
    pub fn gelu_erf(&mut self, a: &Tensor) -> Tensor {
        // SAFETY: elementwise.
        self.op(&[a], |c| unsafe { sys::ggml_gelu_erf(c, a.as_ptr()) })
    }

    /// silu(gate) * up, fused.
    pub fn swiglu_split(&mut self, gate: &Tensor, up: &Tensor) -> Tensor {
        check(gate.ne() == up.ne(), || format!("swiglu {:?} and {:?}", gate.ne(), up.ne()));
        // SAFETY: equal shapes.
        self.op(&[gate, up], |c| unsafe { sys::ggml_swiglu_split(c, gate.as_ptr(), up.as_ptr()) })
    }

    /// Resizes the first two dimensions of [w, h, c, n] to [ne0, ne1, ne2, ne3].
    pub fn interpolate(&mut self, a: &Tensor, ne: [i64; 4], mode: ScaleMode) -> Tensor {
        check(ne.iter().all(|&n| n > 0), || format!("interpolate to {ne:?}"));
        check(a.ty() == GgmlType::F32, || "interpolate needs F32".into());
        let m = match mode {
            ScaleMode::Nearest => sys::GGML_SCALE_MODE_NEAREST,
            ScaleMode::Bilinear => sys::GGML_SCALE_MODE_BILINEAR,
            ScaleMode::Bicubic => sys::GGML_SCALE_MODE_BICUBIC,
        };
        // SAFETY: sizes positive, F32 input.
        self.op(&[a], |c| unsafe { sys::ggml_interpolate(c, a.as_ptr(), ne[0], ne[1], ne[2], ne[3], m) })
    }
}
