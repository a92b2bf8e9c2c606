//! ggml-backend: devices, backends, buffers and the graph scheduler.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use super::context::{Context, Graph, Tensor};
use super::sys;
use super::types::GgmlType;

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated static strings for names and descriptions.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// A compute device known to ggml (the CPU, or a GPU when built with its feature).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Device {
    ptr: sys::ggml_backend_dev_t,
}

// SAFETY: device handles are static registry entries in ggml, valid for the process lifetime.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accelerator,
}

impl Device {
    /// Every device of this build, CPU included.
    pub fn all() -> Vec<Device> {
        super::init();
        // SAFETY: registry queries; indices below the count are valid.
        let n = unsafe { sys::ggml_backend_dev_count() };
        (0..n).map(|i| Device { ptr: unsafe { sys::ggml_backend_dev_get(i) } }).collect()
    }

    pub fn cpu() -> Device {
        Device::all().into_iter().find(|d| d.kind() == DeviceKind::Cpu).expect("ggml has no CPU device")
    }

    /// The device with this name (case-insensitive), e.g. `cpu` or `cuda0`.
    pub fn by_name(name: &str) -> Option<Device> {
        Device::all().into_iter().find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// Wraps a device handle of ggml's registry (valid for the process lifetime).
    pub(super) fn from_raw(ptr: sys::ggml_backend_dev_t) -> Device {
        Device { ptr }
    }

    pub(super) fn as_raw(&self) -> sys::ggml_backend_dev_t {
        self.ptr
    }

    pub fn name(&self) -> String {
        // SAFETY: valid device handle.
        cstr(unsafe { sys::ggml_backend_dev_name(self.ptr) })
    }

    pub fn description(&self) -> String {
        // SAFETY: valid device handle.
        cstr(unsafe { sys::ggml_backend_dev_description(self.ptr) })
    }

    /// Free and total memory in bytes, as the device reports them (the CPU reports the system's).
    pub fn memory(&self) -> (usize, usize) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid device handle; ggml writes the two sizes.
        unsafe { sys::ggml_backend_dev_memory(self.ptr, &mut free, &mut total) };
        (free, total)
    }

    pub fn kind(&self) -> DeviceKind {
        // SAFETY: valid device handle.
        match unsafe { sys::ggml_backend_dev_type(self.ptr) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accelerator,
            _ => DeviceKind::Gpu,
        }
    }

    pub fn buffer_type(&self) -> BufferType {
        // SAFETY: valid device handle.
        BufferType { ptr: unsafe { sys::ggml_backend_dev_buffer_type(self.ptr) } }
    }

    /// Extra buffer types of this device, such as the CPU's repacked-weight layouts. (ggml's AMX
    /// type is not among them: it is compiled out, see scripts/ggml-cc.)
    pub fn extra_buffer_types(&self) -> Vec<BufferType> {
        // SAFETY: valid device handle; the proc address, when present, has this signature
        // (ggml-backend.h, ggml_backend_dev_get_extra_bufts_t) and returns a NULL-terminated array.
        unsafe {
            let reg = sys::ggml_backend_dev_backend_reg(self.ptr);
            let name = CString::new("ggml_backend_dev_get_extra_bufts").unwrap();
            let f = sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            if f.is_null() {
                return Vec::new();
            }
            type GetExtra = unsafe extern "C" fn(sys::ggml_backend_dev_t) -> *mut sys::ggml_backend_buffer_type_t;
            let get: GetExtra = std::mem::transmute(f);
            let mut list = get(self.ptr);
            let mut out = Vec::new();
            while !list.is_null() && !(*list).is_null() {
                out.push(BufferType { ptr: *list });
                list = list.add(1);
            }
            out
        }
    }

    /// Whether a weight of this type and shape, placed in `buft`, can be the first argument of a
    /// matrix multiplication on this device. Mirrors how llama.cpp picks repacked CPU layouts: build
    /// the op on a scratch context with the weight in an empty buffer of that type and ask the device.
    pub fn weight_buffer_supported(&self, buft: &BufferType, ty: GgmlType, ne: [i64; 2]) -> bool {
        let mut ctx = Context::new(4, 0);
        let w = ctx.new_tensor(ty, &ne);
        let x = ctx.new_tensor(GgmlType::F32, &[ne[0], 512]);
        let op = ctx.mul_mat(&w, &x);
        // SAFETY: a zero-size buffer of this type is valid to create and only serves as a tag on the
        // scratch weight; it is freed before return and the scratch tensor is never computed.
        unsafe {
            let dummy = sys::ggml_backend_buft_alloc_buffer(buft.ptr, 0);
            if dummy.is_null() {
                return false;
            }
            (*w.as_ptr()).buffer = dummy;
            let ok = sys::ggml_backend_dev_supports_op(self.ptr, op.as_ptr());
            (*w.as_ptr()).buffer = std::ptr::null_mut();
            sys::ggml_backend_buffer_free(dummy);
            ok
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} - {})", self.name(), self.description())
    }
}

/// A kind of backend memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BufferType {
    ptr: sys::ggml_backend_buffer_type_t,
}

// SAFETY: buffer types are static objects inside ggml.
unsafe impl Send for BufferType {}
unsafe impl Sync for BufferType {}

impl BufferType {
    pub fn cpu() -> BufferType {
        // SAFETY: returns a static object.
        BufferType { ptr: unsafe { sys::ggml_backend_cpu_buffer_type() } }
    }

    pub fn name(&self) -> String {
        // SAFETY: valid handle.
        cstr(unsafe { sys::ggml_backend_buft_name(self.ptr) })
    }

    /// Allocates one buffer holding every tensor of `ctx` (which must all be unallocated).
    pub fn alloc_context_tensors(&self, ctx: &Context) -> Option<Arc<Buffer>> {
        // SAFETY: the context is alive; ggml allocates and assigns every unallocated tensor.
        let p = unsafe { sys::ggml_backend_alloc_ctx_tensors_from_buft(ctx.as_ptr(), self.ptr) };
        let buffer = Arc::new(Buffer { ptr: NonNull::new(p)? });
        ctx.keep_alive(buffer.clone());
        Some(buffer)
    }
}

impl std::fmt::Debug for BufferType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferType({})", self.name())
    }
}

/// Backend memory.
pub struct Buffer {
    ptr: NonNull<sys::ggml_backend_buffer>,
}

// SAFETY: a buffer is memory owned by this struct; ggml allows reading and writing tensors in it
// from any thread as long as computations on it are not concurrent, which the owners ensure.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: freed once, here.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) }
    }
}

impl Buffer {
    /// A CPU buffer over host memory owned elsewhere (a file mapping). ggml never writes to weights.
    /// The owner of the memory must outlive the buffer: callers keep both alive in the context.
    pub fn from_host_memory(bytes: &[u8]) -> Option<Arc<Buffer>> {
        if bytes.is_empty() {
            return None;
        }
        // SAFETY: the pointer and length describe valid memory; ggml only reads weight tensors.
        let p = unsafe { sys::ggml_backend_cpu_buffer_from_ptr(bytes.as_ptr() as *mut c_void, bytes.len()) };
        let buffer = Buffer { ptr: NonNull::new(p)? };
        buffer.mark_weights();
        Some(Arc::new(buffer))
    }

    pub fn size(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr.as_ptr()) }
    }

    fn base(&self) -> *const u8 {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as *const u8 }
    }

    /// Tells the scheduler these are weights (it prefers running ops where weights live).
    pub fn mark_weights(&self) {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_set_usage(self.ptr.as_ptr(), sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS) }
    }

    pub fn clear(&self, value: u8) {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_clear(self.ptr.as_ptr(), value) }
    }

    /// Places `t` at byte `offset` of this buffer (the tensor must be unallocated and fit).
    pub fn place(&self, t: &Tensor, offset: usize) {
        let size = t.n_bytes();
        assert!(offset.checked_add(size).is_some_and(|end| end <= self.size()), "tensor {:?} does not fit the buffer", t.name());
        assert!(!t.is_allocated(), "tensor {:?} is already allocated", t.name());
        // SAFETY: the range lies inside the buffer; the tensor is unallocated.
        let status = unsafe {
            let addr = (self.base() as *mut u8).add(offset) as *mut c_void;
            sys::ggml_backend_tensor_alloc(self.ptr.as_ptr(), t.as_ptr(), addr)
        };
        assert_eq!(status, sys::GGML_STATUS_SUCCESS, "ggml_backend_tensor_alloc failed for {:?}", t.name());
    }
}

/// A persistent CPU thread pool: threads spin briefly between graphs instead of being re-created,
/// which matters for single-token decode.
struct Threadpool {
    ptr: NonNull<sys::ggml_threadpool>,
}

impl Drop for Threadpool {
    fn drop(&mut self) {
        // SAFETY: created by ggml_threadpool_new, freed once, after the backend that uses it.
        unsafe { sys::ggml_threadpool_free(self.ptr.as_ptr()) }
    }
}

/// A backend instance: the object that computes graphs on one device.
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
    device: Device,
    // Declared after `ptr` is irrelevant for drop order: Drop below frees the backend first.
    threadpool: Option<Threadpool>,
}

// SAFETY: a backend computes for one thread at a time (only `&mut Scheduler` computes, and the
// scheduler owns its backends); shared access only reads its name and device.
unsafe impl Send for Backend {}
unsafe impl Sync for Backend {}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: freed once; the threadpool is freed afterwards by its own Drop.
        unsafe { sys::ggml_backend_free(self.ptr.as_ptr()) }
    }
}

impl Backend {
    /// Starts a backend on `device`. For the CPU, `n_threads` threads in a persistent pool.
    pub fn new(device: Device, n_threads: usize) -> Option<Backend> {
        // SAFETY: valid device handle; null params mean defaults.
        let p = unsafe { sys::ggml_backend_dev_init(device.ptr, std::ptr::null()) };
        let ptr = NonNull::new(p)?;
        let mut backend = Backend { ptr, device, threadpool: None };
        if device.kind() == DeviceKind::Cpu {
            backend.set_threads(n_threads);
        }
        Some(backend)
    }

    pub fn cpu(n_threads: usize) -> Backend {
        Backend::new(Device::cpu(), n_threads).expect("the CPU backend failed to start")
    }

    fn set_threads(&mut self, n_threads: usize) {
        let n = n_threads.clamp(1, 512) as i32;
        // SAFETY: the backend is a CPU backend (checked by the caller); the pool outlives its use
        // because Backend's Drop frees the backend before the pool.
        unsafe {
            let mut params = sys::ggml_threadpool_params_default(n);
            let pool = sys::ggml_threadpool_new(&mut params);
            sys::ggml_backend_cpu_set_n_threads(self.ptr.as_ptr(), n);
            if let Some(pool) = NonNull::new(pool) {
                sys::ggml_backend_cpu_set_threadpool(self.ptr.as_ptr(), pool.as_ptr());
                self.threadpool = Some(Threadpool { ptr: pool });
            }
        }
    }

    pub fn name(&self) -> String {
        // SAFETY: valid backend.
        cstr(unsafe { sys::ggml_backend_name(self.ptr.as_ptr()) })
    }

    pub fn is_cpu(&self) -> bool {
        self.device.kind() == DeviceKind::Cpu
    }
}

struct SchedInner {
    ptr: NonNull<sys::ggml_backend_sched>,
    /// Owned here so that they outlive the scheduler, which contexts may keep alive.
    backends: Vec<Backend>,
}

// SAFETY: used from one thread at a time (methods need &mut Scheduler); kept alive by contexts
// whose tensors it allocated.
unsafe impl Send for SchedInner {}
unsafe impl Sync for SchedInner {}

impl Drop for SchedInner {
    fn drop(&mut self) {
        // SAFETY: freed once, before the backends (fields drop after this body).
        unsafe { sys::ggml_backend_sched_free(self.ptr.as_ptr()) }
    }
}

/// Graph failures that are not bugs: memory exhaustion, or a backend reporting failure.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("could not allocate {0} for the compute graph (out of memory)")]
    Alloc(&'static str),
    #[error("the {backend} backend failed to compute the graph (status {status})")]
    Compute { backend: String, status: i32 },
}

/// A device whose backend would not start (a missing driver, no memory on it).
#[derive(Debug, thiserror::Error)]
#[error("device {name:?} could not be started (this build has: {available})")]
pub struct DeviceError {
    pub name: String,
    /// Every device of this build, comma-separated, for the user to pick another.
    pub available: String,
}

impl DeviceError {
    fn new(device: Device) -> DeviceError {
        let available = Device::all().iter().map(|d| d.name()).collect::<Vec<_>>().join(", ");
        DeviceError { name: device.name(), available }
    }
}

/// Splits graphs across backends, allocates their intermediate tensors and runs them.
pub struct Scheduler {
    inner: Arc<SchedInner>,
    /// See `copy_bytes`.
    copy_bytes: usize,
}

impl Scheduler {
    /// The engine's setup: a backend on `device` first when it is not the CPU, then the CPU backend
    /// (`n_threads` threads), which runs what the device cannot and the custom operations.
    pub fn for_device(device: Device, n_threads: usize, max_graph_nodes: usize) -> Result<Scheduler, DeviceError> {
        Scheduler::for_devices(&[device], n_threads, max_graph_nodes)
    }

    /// `for_device` with several devices (layers split over them), in priority order.
    pub fn for_devices(devices: &[Device], n_threads: usize, max_graph_nodes: usize) -> Result<Scheduler, DeviceError> {
        let mut backends = Vec::new();
        for &device in devices.iter().filter(|d| d.kind() != DeviceKind::Cpu) {
            backends.push(Backend::new(device, n_threads).ok_or_else(|| DeviceError::new(device))?);
        }
        let cpu = Device::cpu();
        backends.push(Backend::new(cpu, n_threads).ok_or_else(|| DeviceError::new(cpu))?);
        let mut sched = Scheduler::new(backends, max_graph_nodes);
        sched.dump_activations_from_env();
        Ok(sched)
    }

    /// A scheduler over `backends`, in priority order; the CPU backend must be last.
    pub fn new(backends: Vec<Backend>, max_graph_nodes: usize) -> Scheduler {
        assert!(!backends.is_empty() && backends.last().unwrap().is_cpu(), "the scheduler needs the CPU backend last");
        let mut ptrs: Vec<sys::ggml_backend_t> = backends.iter().map(|b| b.ptr.as_ptr()).collect();
        // SAFETY: backends alive for the scheduler's lifetime (owned here); null bufts = defaults.
        let p = unsafe {
            sys::ggml_backend_sched_new(ptrs.as_mut_ptr(), std::ptr::null_mut(), ptrs.len() as i32, max_graph_nodes, false, true)
        };
        let ptr = NonNull::new(p).expect("ggml_backend_sched_new");
        Scheduler { inner: Arc::new(SchedInner { ptr, backends }), copy_bytes: 0 }
    }

    pub fn backends(&self) -> &[Backend] {
        &self.inner.backends
    }

    /// Sizes the compute buffers for the worst case; later graphs of at most this size reuse them.
    pub fn reserve(&mut self, graph: &Graph) -> Result<(), ComputeError> {
        self.pin_host_ops(graph);
        // SAFETY: valid scheduler and graph.
        let ok = unsafe { sys::ggml_backend_sched_reserve(self.inner.ptr.as_ptr(), graph.as_ptr()) };
        if ok {
            Ok(())
        } else {
            Err(ComputeError::Alloc("the worst-case compute buffers"))
        }
    }

    /// Allocates the graph's tensors. Its context then keeps this scheduler's memory alive.
    pub fn alloc(&mut self, graph: &Graph, ctx: &Context) -> Result<(), ComputeError> {
        // SAFETY: valid scheduler; reset first as ggml requires before a new allocation.
        unsafe { sys::ggml_backend_sched_reset(self.inner.ptr.as_ptr()) };
        self.pin_host_ops(graph);
        // SAFETY: valid scheduler and graph; the assignments made after the reset are kept.
        let ok = unsafe { sys::ggml_backend_sched_alloc_graph(self.inner.ptr.as_ptr(), graph.as_ptr()) };
        if !ok {
            return Err(ComputeError::Alloc("the graph's tensors"));
        }
        ctx.keep_alive(self.inner.clone());
        self.copy_bytes = self.count_copies(graph);
        Ok(())
    }

    /// Bytes the scheduler copies between backends each time the last allocated graph computes:
    /// the inputs of each split that live on another backend. 0 with one backend.
    pub fn copy_bytes(&self) -> usize {
        self.copy_bytes
    }

    /// Sums the scheduler's copies of the allocated graph. When ggml's scheduler splits a graph,
    /// it points each node that reads a tensor of another backend at a copy of it in its own
    /// context, made per (tensor, destination backend), and copies into it at every compute.
    /// Those copies are the only sources it has not assigned a backend to (it assigns every
    /// tensor of the graph itself), so they are counted once each by that.
    fn count_copies(&self, graph: &Graph) -> usize {
        if self.inner.backends.len() < 2 {
            return 0;
        }
        let sched = self.inner.ptr.as_ptr();
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for i in 0..graph.n_nodes() {
            let node = graph.node(i);
            // SAFETY: a node of a live graph; its sources are null or live tensors.
            for &src in unsafe { (*node).src.iter() }.filter(|s| !s.is_null()) {
                // SAFETY: valid scheduler and a tensor of the graph it just allocated.
                let assigned = !unsafe { sys::ggml_backend_sched_get_tensor_backend(sched, src) }.is_null();
                if !assigned && seen.insert(src as usize) {
                    // SAFETY: a live tensor.
                    bytes += unsafe { sys::ggml_nbytes(src) };
                }
            }
        }
        bytes
    }

    /// Runs an allocated graph (again, after its inputs were set).
    pub fn compute(&mut self, graph: &Graph) -> Result<(), ComputeError> {
        // SAFETY: the graph was allocated by this scheduler.
        let status = unsafe { sys::ggml_backend_sched_graph_compute(self.inner.ptr.as_ptr(), graph.as_ptr()) };
        if status == sys::GGML_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(ComputeError::Compute { backend: self.inner.backends[0].name(), status })
        }
    }

    /// Assigns the graph's custom operations (host functions: TTM's selection, DyCoke's, see
    /// `custom`) to the CPU backend. Some backends claim every operation (ggml's RPC client does),
    /// and the scheduler would otherwise send a host function pointer to another machine.
    fn pin_host_ops(&mut self, graph: &Graph) {
        if self.inner.backends.len() < 2 {
            return;
        }
        let cpu = self.inner.backends.last().expect("the CPU backend").ptr.as_ptr();
        for i in 0..graph.n_nodes() {
            let node = graph.node(i);
            // SAFETY: a node of a live graph.
            let op = unsafe { (*node).op };
            if matches!(op, sys::GGML_OP_CUSTOM | sys::GGML_OP_MAP_CUSTOM1 | sys::GGML_OP_MAP_CUSTOM2 | sys::GGML_OP_MAP_CUSTOM3) {
                // SAFETY: valid scheduler, a node of the graph it schedules, one of its backends.
                unsafe { sys::ggml_backend_sched_set_tensor_backend(self.inner.ptr.as_ptr(), node, cpu) }
            }
        }
    }

    /// Bytes of compute buffer held for `backend`.
    pub fn buffer_size(&self, backend: usize) -> usize {
        // SAFETY: index within the backend list.
        unsafe { sys::ggml_backend_sched_get_buffer_size(self.inner.ptr.as_ptr(), self.inner.backends[backend].ptr.as_ptr()) }
    }

    /// Writes named activations to files as graphs compute, when `DYCOKE_DUMP_DIR` asks for it
    /// (see the `dump` module); otherwise does nothing.
    fn dump_activations_from_env(&mut self) {
        if super::dump::enabled() {
            // SAFETY: valid scheduler; the callback matches ggml_backend_sched_eval_callback, keeps
            // no pointer past a call and needs no user data.
            unsafe { sys::ggml_backend_sched_set_eval_callback(self.inner.ptr.as_ptr(), Some(super::dump::eval_callback), std::ptr::null_mut()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_setup_is_one_cpu_backend() {
        let sched = Scheduler::for_device(Device::cpu(), 2, 16).unwrap();
        assert_eq!(sched.backends().len(), 1);
        assert!(sched.backends()[0].is_cpu());
    }


    #[test]
    fn device_error_lists_every_device() {
        let e = DeviceError::new(Device::cpu());
        let all = Device::all();
        assert!(!all.is_empty());
        for d in all {
            assert!(e.available.contains(&d.name()), "{} missing from {:?}", d.name(), e.available);
        }
        assert!(e.to_string().contains(&format!("{:?}", Device::cpu().name())));
    }
}
