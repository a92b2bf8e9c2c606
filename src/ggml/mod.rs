//! Safe wrappers over ggml. All `unsafe` of the engine (apart from the C API) lives in this module.

mod backend;
mod context;
pub mod custom;
mod dump;
mod mapped;
pub mod rpc;
mod types;

pub use backend::{Backend, Buffer, BufferType, ComputeError, Device, DeviceError, DeviceKind, Scheduler};
pub use context::{Context, Graph, RopeParams, ScaleMode, Tensor, ROPE_TYPE_NEOX};
pub use mapped::MappedFile;
pub use types::GgmlType;

pub(crate) use ggml_sys as sys;

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

/// How much of ggml's own logging reaches stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum LogLevel {
    Silent = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

static LOG_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);
// Continuation lines (GGML_LOG_LEVEL_CONT) follow the level of the line they continue.
static LAST_SHOWN: AtomicU8 = AtomicU8::new(0);

/// Sets the level of ggml messages shown on stderr (process-wide, as ggml's logger is).
fn set_log_level(level: LogLevel) {
    LOG_LEVEL.store(level as u8, Ordering::Relaxed);
}

pub(crate) extern "C" fn log_callback(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    let ours = match level {
        sys::GGML_LOG_LEVEL_ERROR => LogLevel::Error,
        sys::GGML_LOG_LEVEL_WARN => LogLevel::Warn,
        sys::GGML_LOG_LEVEL_INFO => LogLevel::Info,
        sys::GGML_LOG_LEVEL_CONT => {
            if LAST_SHOWN.load(Ordering::Relaxed) == 1 && !text.is_null() {
                // SAFETY: ggml passes a NUL-terminated message.
                eprint!("{}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
            }
            return;
        }
        _ => LogLevel::Debug,
    };
    let show = ours as u8 <= LOG_LEVEL.load(Ordering::Relaxed);
    LAST_SHOWN.store(u8::from(show), Ordering::Relaxed);
    if show && !text.is_null() {
        // SAFETY: ggml passes a NUL-terminated message.
        eprint!("ggml: {}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// Called by ggml just before it aborts the process (GGML_ABORT), which nothing can stop. Its
/// message names ggml's source line; this says what it means for the user where that is known:
/// ggml's RPC client aborts when a server dies or drops the connection in the middle of a
/// computation, after the handshake checks of `rpc` (README, "RPC").
extern "C" fn on_ggml_abort(message: *const std::ffi::c_char) {
    let text = if message.is_null() {
        String::new()
    } else {
        // SAFETY: ggml passes a NUL-terminated message.
        unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
    };
    if text.contains("Remote RPC server crashed") {
        eprintln!(
            "error: an RPC server stopped answering in the middle of a computation (it crashed, was stopped, or \
             the connection dropped); this process cannot continue. Restart the server and run again. (ggml: {text})"
        );
    } else {
        // The backtrace ggml prints when no callback is set, so that a bug stays findable.
        eprintln!("error: ggml stopped the process: {text}\n{}", std::backtrace::Backtrace::force_capture());
    }
}

/// One-time setup: routes ggml's log through our level filter and names the cause of ggml's
/// aborts. Called by every entry point.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(v) = std::env::var("DYCOKE_GGML_LOG") {
            let level = match v.to_ascii_lowercase().as_str() {
                "silent" | "none" => LogLevel::Silent,
                "error" => LogLevel::Error,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                _ => LogLevel::Warn,
            };
            set_log_level(level);
        }
        // SAFETY: the callback is a plain function valid for the whole process.
        unsafe {
            sys::ggml_log_set(Some(log_callback), std::ptr::null_mut());
            sys::ggml_set_abort_callback(Some(on_ggml_abort));
            sys::ggml_cpu_init();
        }
    });
}

/// The SIMD features the linked ggml CPU backend was compiled for and found.
fn cpu_features() -> Vec<(&'static str, bool)> {
    // SAFETY: plain queries.
    unsafe {
        vec![
            ("SSE3", sys::ggml_cpu_has_sse3() != 0),
            ("AVX", sys::ggml_cpu_has_avx() != 0),
            ("AVX2", sys::ggml_cpu_has_avx2() != 0),
            ("F16C", sys::ggml_cpu_has_f16c() != 0),
            ("FMA", sys::ggml_cpu_has_fma() != 0),
            ("AVX512", sys::ggml_cpu_has_avx512() != 0),
            ("AVX512_BF16", sys::ggml_cpu_has_avx512_bf16() != 0),
            ("NEON", sys::ggml_cpu_has_neon() != 0),
            ("ARM_FMA", sys::ggml_cpu_has_arm_fma() != 0),
        ]
    }
}

/// Whether ggml's CPU backend was built for AVX-512 (its matrix products then run 16 F32 lanes).
pub fn cpu_has_avx512() -> bool {
    // SAFETY: plain query of the features ggml was compiled for.
    unsafe { sys::ggml_cpu_has_avx512() != 0 }
}

/// A one-line summary such as "AVX2 F16C FMA".
pub fn cpu_features_line() -> String {
    let on: Vec<&str> = cpu_features().into_iter().filter(|f| f.1).map(|f| f.0).collect();
    if on.is_empty() {
        "no SIMD".to_string()
    } else {
        on.join(" ")
    }
}

/// Whether ggml's quantizer for this type needs an importance matrix (we never supply one).
fn quantize_requires_imatrix(t: GgmlType) -> bool {
    // SAFETY: valid type id.
    unsafe { sys::ggml_quantize_requires_imatrix(t.id()) }
}

/// Whether ggml can quantize (or convert) F32 rows to this type.
pub fn can_quantize_to(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Bf16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
            | GgmlType::Iq4Nl
    ) && !quantize_requires_imatrix(t)
}

/// Quantizes `rows` rows of `n_per_row` F32 values into `t` with ggml's own quantizer.
/// Panics on misuse (row size not a multiple of the block, wrong lengths); callers validate first.
pub fn quantize_rows(t: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    assert!(can_quantize_to(t), "ggml cannot quantize to {t} without an importance matrix");
    assert!(n_per_row > 0 && src.len() % n_per_row == 0, "quantize: {} values in rows of {n_per_row}", src.len());
    let rows = src.len() / n_per_row;
    let row_bytes = t.row_bytes(n_per_row as u64).expect("row is a whole number of blocks") as usize;
    let mut out = vec![0u8; row_bytes * rows];
    // SAFETY: ggml_quantize_chunk asserts start % n_per_row == 0 (start = 0) and reads rows*n_per_row
    // floats and writes rows*row_bytes bytes, both sized above; validate_row checks nothing extra.
    let written = unsafe {
        sys::ggml_quantize_init(t.id());
        sys::ggml_quantize_chunk(
            t.id(),
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            rows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(written, out.len(), "ggml_quantize_chunk wrote an unexpected size");
    out
}

/// Converts `n` elements of type `t` (a whole number of blocks) to F32 with ggml's own routines.
pub fn dequantize(t: GgmlType, src: &[u8], out: &mut [f32]) {
    let n = out.len() as u64;
    let bytes = t.row_bytes(n).expect("whole blocks") as usize;
    assert_eq!(src.len(), bytes, "dequantize: {} bytes for {n} {t} values", src.len());
    if t == GgmlType::F32 {
        // ggml has no conversion from F32 to itself.
        for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        return;
    }
    // SAFETY: the traits table has a to_float for every valid type that holds data; lengths match.
    unsafe {
        let traits = sys::ggml_get_type_traits(t.id());
        let to_float = (*traits).to_float.unwrap_or_else(|| panic!("ggml cannot convert {t} to f32"));
        to_float(src.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
}

/// Whether ggml has a to-F32 conversion for the type (all weight types do).
pub fn can_dequantize(t: GgmlType) -> bool {
    // SAFETY: valid type id.
    t == GgmlType::F32 || unsafe { (*sys::ggml_get_type_traits(t.id())).to_float.is_some() }
}
