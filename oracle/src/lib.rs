//! Independent references for dycoke's tests and benchmarks, kept out of the shipped engine:
//! llama.cpp's libllama for the Qwen2 path (tokenization, logits and greedy tokens in tests, speed in
//! `dycoke bench`), ggml's own GGUF reader for cross-checking dycoke's, and, with the `mtmd`
//! feature, llama.cpp's vision encoder for comparing encode speed.
//!
//! Every `unsafe` block calls into these C libraries through `ggml-sys`; each says why its
//! pointers and lengths are valid.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Once;

use ggml_sys as sys;

fn backend_init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: one-time global initialisation; the log callback is a plain function.
        unsafe {
            sys::llama_backend_init();
            sys::llama_log_set(Some(reference_log), std::ptr::null_mut());
        }
    });
}

/// libllama's log (and, once it is set, ggml's): only errors reach stderr (its load-time notes are noise in tests and
/// benchmarks).
extern "C" fn reference_log(level: sys::ggml_log_level, text: *const c_char, _user: *mut std::ffi::c_void) {
    if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated message.
        eprint!("llama.cpp: {}", unsafe { std::ffi::CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// A model loaded by libllama.
pub struct RefModel {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: a llama_model is immutable after load and documented as shareable across contexts.
unsafe impl Send for RefModel {}
// SAFETY: as for Send.
unsafe impl Sync for RefModel {}

impl Drop for RefModel {
    fn drop(&mut self) {
        // SAFETY: freed once; contexts borrow the model, so none outlives it.
        unsafe { sys::llama_model_free(self.ptr.as_ptr()) }
    }
}

impl RefModel {
    /// Loads a GGUF with llama.cpp's defaults (mmap, CPU weight repacking). `vocab_only` skips the
    /// weights. None when llama.cpp refuses the file.
    pub fn load(path: &Path, vocab_only: bool) -> Option<RefModel> {
        backend_init();
        let c = CString::new(path.to_str()?).ok()?;
        // SAFETY: default params, then a plain load call with a valid path.
        let ptr = unsafe {
            let mut params = sys::llama_model_default_params();
            params.vocab_only = vocab_only;
            params.n_gpu_layers = 0;
            sys::llama_model_load_from_file(c.as_ptr(), params)
        };
        NonNull::new(ptr).map(|ptr| RefModel { ptr })
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: valid model.
        unsafe { sys::llama_model_get_vocab(self.ptr.as_ptr()) }
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    /// Token ids of `text`. `parse_special`: recognise control tokens written in the text.
    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<i32> {
        let mut out = vec![0i32; text.len() + 16];
        loop {
            // SAFETY: the buffer holds out.len() tokens; the text pointer and length are valid.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr() as *const c_char,
                    text.len() as i32,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return out;
            }
            out.resize((-n) as usize, 0);
        }
    }

    /// The bytes of one token. `special`: render control tokens as their text.
    pub fn token_to_piece(&self, token: i32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buffer of buf.len() bytes.
            let n = unsafe {
                sys::llama_token_to_piece(self.vocab(), token, buf.as_mut_ptr() as *mut c_char, buf.len() as i32, 0, special)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab.
        unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }
}

#[derive(Clone, Copy)]
enum RefInput<'a> {
    Tokens(&'a [i32]),
    Embeddings(&'a [f32], usize),
}

/// A libllama inference context with its own persistent thread pool (as llama-bench sets up).
pub struct RefContext<'m> {
    ptr: NonNull<sys::llama_context>,
    threadpool: *mut sys::ggml_threadpool,
    _model: &'m RefModel,
    n_vocab: usize,
    n_past: i32,
    n_batch: usize,
}

impl Drop for RefContext<'_> {
    fn drop(&mut self) {
        // SAFETY: the context is freed before the thread pool it uses.
        unsafe {
            sys::llama_free(self.ptr.as_ptr());
            if !self.threadpool.is_null() {
                sys::ggml_threadpool_free(self.threadpool);
            }
        }
    }
}

impl<'m> RefContext<'m> {
    /// A context of `n_ctx` positions, flash attention on (as ours), F16 KV cache.
    pub fn new(model: &'m RefModel, n_ctx: u32, n_batch: u32, n_threads: i32) -> Option<RefContext<'m>> {
        // SAFETY: default params adjusted; the model outlives the context (lifetime 'm).
        unsafe {
            let mut p = sys::llama_context_default_params();
            p.n_ctx = n_ctx;
            p.n_batch = n_batch;
            p.n_ubatch = n_batch;
            p.n_threads = n_threads;
            p.n_threads_batch = n_threads;
            p.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_ENABLED;
            p.no_perf = true;
            let ptr = NonNull::new(sys::llama_init_from_model(model.ptr.as_ptr(), p))?;
            let mut tpp = sys::ggml_threadpool_params_default(n_threads);
            let threadpool = sys::ggml_threadpool_new(&mut tpp);
            if !threadpool.is_null() {
                sys::llama_attach_threadpool(ptr.as_ptr(), threadpool, threadpool);
            }
            Some(RefContext { ptr, threadpool, _model: model, n_vocab: model.n_vocab(), n_past: 0, n_batch: n_batch as usize })
        }
    }

    pub fn n_past(&self) -> usize {
        self.n_past as usize
    }

    /// Forgets the sequence.
    pub fn clear(&mut self) {
        // SAFETY: valid context.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
        self.n_past = 0;
    }

    /// Forgets positions from `n` on.
    pub fn truncate(&mut self, n: usize) {
        // SAFETY: valid context; sequence 0 is the only one used.
        unsafe { sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, n as i32, -1) };
        self.n_past = self.n_past.min(n as i32);
    }

    /// Appends tokens (split into batches of at most n_batch); keeps the last position's logits.
    pub fn decode_tokens(&mut self, tokens: &[i32]) -> Result<(), i32> {
        self.decode(RefInput::Tokens(tokens))
    }

    /// Appends embedding rows (n_embd each), as a multimodal projector would.
    pub fn decode_embeddings(&mut self, embd: &[f32], n_embd: usize) -> Result<(), i32> {
        self.decode(RefInput::Embeddings(embd, n_embd))
    }

    fn decode(&mut self, input: RefInput) -> Result<(), i32> {
        let chunk = self.n_batch;
        let (n, n_embd) = match input {
            RefInput::Tokens(t) => (t.len(), 0),
            RefInput::Embeddings(e, d) => (e.len() / d, d),
        };
        let mut start = 0;
        while start < n {
            let m = chunk.min(n - start);
            // SAFETY: llama_batch_init allocates m entries (and m*n_embd floats when n_embd > 0);
            // every write below is to index i < m; the batch is freed after decoding.
            unsafe {
                let batch = sys::llama_batch_init(m as i32, n_embd as i32, 1);
                for i in 0..m {
                    match input {
                        RefInput::Tokens(t) => *batch.token.add(i) = t[start + i],
                        RefInput::Embeddings(e, d) => {
                            std::ptr::copy_nonoverlapping(e[(start + i) * d..].as_ptr(), batch.embd.add(i * d), d)
                        }
                    }
                    *batch.pos.add(i) = self.n_past + i as i32;
                    *batch.n_seq_id.add(i) = 1;
                    *(*batch.seq_id.add(i)) = 0;
                    *batch.logits.add(i) = i8::from(start + m == n && i == m - 1);
                }
                let mut batch = batch;
                batch.n_tokens = m as i32;
                let rc = sys::llama_decode(self.ptr.as_ptr(), batch);
                sys::llama_batch_free(batch);
                if rc != 0 {
                    return Err(rc);
                }
            }
            self.n_past += m as i32;
            start += m;
        }
        Ok(())
    }

    /// The logits of the last decoded position.
    pub fn logits(&self) -> Vec<f32> {
        // SAFETY: after a successful decode, -1 addresses the last output row of n_vocab floats.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), -1);
            assert!(!p.is_null(), "no logits: decode first");
            std::slice::from_raw_parts(p, self.n_vocab).to_vec()
        }
    }
}

/// What ggml's own GGUF reader (`gguf_init_from_file`) sees in a file, for cross-checking ours.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufDump {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    /// (name, type id, ne, offset from the data section, size)
    pub tensors: Vec<(String, u32, [u64; 4], u64, u64)>,
}

/// A metadata value as ggml's reader returns it, one variant per GGUF value type. Nested arrays,
/// which ggml's accessors cannot read, come back as an empty `Array::Array`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A homogeneous metadata array (see [`Value`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Reads a GGUF with ggml's reader. None when ggml rejects the file.
pub fn gguf_dump(path: &Path) -> Option<GgufDump> {
    let c = CString::new(path.to_str()?).ok()?;
    // SAFETY: no_alloc with no ggml context requested; every accessor is called with indices below
    // the counts ggml reports and with the getter matching the reported type; the context is freed
    // at the end.
    unsafe {
        let params = sys::gguf_init_params { no_alloc: true, ctx: std::ptr::null_mut() };
        let ctx = sys::gguf_init_from_file(c.as_ptr(), params);
        if ctx.is_null() {
            return None;
        }
        let text = |p: *const c_char| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        let mut metadata = Vec::new();
        for i in 0..sys::gguf_get_n_kv(ctx) {
            let key = text(sys::gguf_get_key(ctx, i));
            let value = match sys::gguf_get_kv_type(ctx, i) {
                sys::GGUF_TYPE_UINT8 => Value::U8(sys::gguf_get_val_u8(ctx, i)),
                sys::GGUF_TYPE_INT8 => Value::I8(sys::gguf_get_val_i8(ctx, i)),
                sys::GGUF_TYPE_UINT16 => Value::U16(sys::gguf_get_val_u16(ctx, i)),
                sys::GGUF_TYPE_INT16 => Value::I16(sys::gguf_get_val_i16(ctx, i)),
                sys::GGUF_TYPE_UINT32 => Value::U32(sys::gguf_get_val_u32(ctx, i)),
                sys::GGUF_TYPE_INT32 => Value::I32(sys::gguf_get_val_i32(ctx, i)),
                sys::GGUF_TYPE_FLOAT32 => Value::F32(sys::gguf_get_val_f32(ctx, i)),
                sys::GGUF_TYPE_UINT64 => Value::U64(sys::gguf_get_val_u64(ctx, i)),
                sys::GGUF_TYPE_INT64 => Value::I64(sys::gguf_get_val_i64(ctx, i)),
                sys::GGUF_TYPE_FLOAT64 => Value::F64(sys::gguf_get_val_f64(ctx, i)),
                sys::GGUF_TYPE_BOOL => Value::Bool(sys::gguf_get_val_bool(ctx, i)),
                sys::GGUF_TYPE_STRING => Value::String(text(sys::gguf_get_val_str(ctx, i))),
                sys::GGUF_TYPE_ARRAY => {
                    let n = sys::gguf_get_arr_n(ctx, i);
                    let data = sys::gguf_get_arr_data;
                    macro_rules! arr {
                        ($variant:ident, $t:ty) => {{
                            let p = data(ctx, i) as *const $t;
                            Array::$variant((0..n).map(|j| *p.add(j)).collect())
                        }};
                    }
                    Value::Array(match sys::gguf_get_arr_type(ctx, i) {
                        sys::GGUF_TYPE_UINT8 => arr!(U8, u8),
                        sys::GGUF_TYPE_INT8 => arr!(I8, i8),
                        sys::GGUF_TYPE_UINT16 => arr!(U16, u16),
                        sys::GGUF_TYPE_INT16 => arr!(I16, i16),
                        sys::GGUF_TYPE_UINT32 => arr!(U32, u32),
                        sys::GGUF_TYPE_INT32 => arr!(I32, i32),
                        sys::GGUF_TYPE_FLOAT32 => arr!(F32, f32),
                        sys::GGUF_TYPE_UINT64 => arr!(U64, u64),
                        sys::GGUF_TYPE_INT64 => arr!(I64, i64),
                        sys::GGUF_TYPE_FLOAT64 => arr!(F64, f64),
                        sys::GGUF_TYPE_BOOL => {
                            let p = data(ctx, i) as *const u8;
                            Array::Bool((0..n).map(|j| *p.add(j) != 0).collect())
                        }
                        sys::GGUF_TYPE_STRING => Array::String((0..n).map(|j| text(sys::gguf_get_arr_str(ctx, i, j))).collect()),
                        _ => Array::Array(Vec::new()),
                    })
                }
                _ => Value::String("<unknown type>".into()),
            };
            metadata.push((key, value));
        }
        let mut tensors = Vec::new();
        for i in 0..sys::gguf_get_n_tensors(ctx) {
            let ne = sys::gguf_get_tensor_ne(ctx, i);
            tensors.push((
                text(sys::gguf_get_tensor_name(ctx, i)),
                sys::gguf_get_tensor_type(ctx, i),
                [*ne as u64, *ne.add(1) as u64, *ne.add(2) as u64, *ne.add(3) as u64],
                sys::gguf_get_tensor_offset(ctx, i) as u64,
                sys::gguf_get_tensor_size(ctx, i) as u64,
            ));
        }
        let dump = GgufDump {
            version: sys::gguf_get_version(ctx),
            alignment: sys::gguf_get_alignment(ctx) as u64,
            data_offset: sys::gguf_get_data_offset(ctx) as u64,
            metadata,
            tensors,
        };
        sys::gguf_free(ctx);
        Some(dump)
    }
}

/// llama.cpp's vision encoder (clip.cpp through libmtmd), for comparing encode speed on an
/// equivalent file. Built only with the `mtmd` feature (a development comparison).
#[cfg(feature = "mtmd")]
pub struct RefClip<'m> {
    ctx: NonNull<sys::mtmd_context>,
    _model: &'m RefModel,
}

#[cfg(feature = "mtmd")]
impl Drop for RefClip<'_> {
    fn drop(&mut self) {
        // SAFETY: created by mtmd_init_from_file, freed once.
        unsafe { sys::mtmd_free(self.ctx.as_ptr()) }
    }
}

#[cfg(feature = "mtmd")]
impl<'m> RefClip<'m> {
    /// Loads an mmproj with llama.cpp's CLIP for the text model `model`. None when it refuses.
    pub fn load(mmproj: &Path, model: &'m RefModel, n_threads: i32) -> Option<RefClip<'m>> {
        backend_init();
        let c = CString::new(mmproj.to_str()?).ok()?;
        // SAFETY: default params adjusted; the model outlives the context ('m).
        unsafe {
            let mut p = sys::mtmd_context_params_default();
            p.use_gpu = false;
            p.n_threads = n_threads;
            p.print_timings = false;
            p.warmup = false;
            let ctx = sys::mtmd_init_from_file(c.as_ptr(), model.ptr.as_ptr(), p);
            NonNull::new(ctx).map(|ctx| RefClip { ctx, _model: model })
        }
    }

    /// Encodes one RGB image (HWC, 8-bit); returns the seconds the encoder took and the image's tokens.
    pub fn encode_seconds(&mut self, rgb: &[u8], width: u32, height: u32) -> Option<(f64, usize)> {
        assert_eq!(rgb.len(), width as usize * height as usize * 3);
        // SAFETY: the bitmap copies the pixels; chunks and bitmap are freed before return; the
        // marker text is NUL-terminated and outlives the call.
        unsafe {
            let bitmap = sys::mtmd_bitmap_init(width, height, rgb.as_ptr());
            let chunks = sys::mtmd_input_chunks_init();
            let marker = std::ffi::CStr::from_ptr(sys::mtmd_default_marker()).to_owned();
            let text = CString::new(format!("{}\n", marker.to_string_lossy())).ok()?;
            let input = sys::mtmd_input_text { text: text.as_ptr(), text_len: text.as_bytes().len(), add_special: false, parse_special: true };
            let bitmaps = [bitmap as *const sys::mtmd_bitmap];
            let rc = sys::mtmd_tokenize(self.ctx.as_ptr(), chunks, &input, bitmaps.as_ptr(), 1);
            let mut result = None;
            if rc == 0 {
                for i in 0..sys::mtmd_input_chunks_size(chunks) {
                    let chunk = sys::mtmd_input_chunks_get(chunks, i);
                    if sys::mtmd_input_chunk_get_type(chunk) == sys::MTMD_INPUT_CHUNK_TYPE_IMAGE {
                        let t = std::time::Instant::now();
                        if sys::mtmd_encode_chunk(self.ctx.as_ptr(), chunk) == 0 {
                            result = Some((t.elapsed().as_secs_f64(), sys::mtmd_input_chunk_get_n_tokens(chunk)));
                        }
                    }
                }
            }
            sys::mtmd_input_chunks_free(chunks);
            sys::mtmd_bitmap_free(bitmap);
            result
        }
    }
}
