//! llama.cpp's libllama as an independent reference for the Qwen2 path: tokenization, logits and
//! greedy tokens in tests, and speed in `dycoke bench`. Not used to serve requests.

use std::ffi::{c_char, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Once;

use super::sys;

fn backend_init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        super::init();
        // SAFETY: one-time global initialisation; the log callback is a plain function.
        unsafe {
            sys::llama_backend_init();
            sys::llama_log_set(Some(super::log_callback), std::ptr::null_mut());
        }
    });
}

/// A model loaded by libllama.
pub struct RefModel {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: a llama_model is immutable after load and documented as shareable across contexts.
unsafe impl Send for RefModel {}
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
            Some(RefContext { ptr, threadpool, _model: model, n_vocab: model.n_vocab(), n_past: 0 })
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

    /// Appends tokens (split into batches of at most 512); keeps the last position's logits.
    pub fn decode_tokens(&mut self, tokens: &[i32]) -> Result<(), i32> {
        self.decode(RefInput::Tokens(tokens))
    }

    /// Appends embedding rows (n_embd each), as a multimodal projector would.
    pub fn decode_embeddings(&mut self, embd: &[f32], n_embd: usize) -> Result<(), i32> {
        self.decode(RefInput::Embeddings(embd, n_embd))
    }

    fn decode(&mut self, input: RefInput) -> Result<(), i32> {
        const CHUNK: usize = 512;
        let (n, n_embd) = match input {
            RefInput::Tokens(t) => (t.len(), 0),
            RefInput::Embeddings(e, d) => (e.len() / d, d),
        };
        let mut start = 0;
        while start < n {
            let m = CHUNK.min(n - start);
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
