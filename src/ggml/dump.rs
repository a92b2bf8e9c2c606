//! Named activations written to files as graphs compute, to find where two implementations part
//! (compare layer by layer with a reference's hidden states).
//!
//! `DYCOKE_DUMP_DIR=DIR` turns it on for every scheduler that asks for it
//! (`Scheduler::dump_activations_from_env`); `DYCOKE_DUMP_FILTER=TEXT` keeps only names containing
//! TEXT. Both are read once per process. Each computed node whose name is made of letters, digits,
//! `_`, `-` and `.` (the names the models give; ggml's derived names such as "x (view)" are
//! skipped) goes to `DIR/<call>-<name>.f32`, its values as little-endian F32 whatever its type,
//! with `DIR/<call>-<name>.json` giving `name`, `type` (the tensor's own), `ne` (ggml's dimensions,
//! fastest first) and `call`. `<call>` counts the graph runs that computed that name before: the
//! LLM's prefill chunks and decode steps, the vision graph's chunks, each from 0.
//!
//! Dumping makes ggml stop after every named node, so it is slow; it changes no value.

use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use super::sys;
use super::GgmlType;

struct Config {
    dir: PathBuf,
    filter: Option<String>,
}

fn config() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = std::env::var_os("DYCOKE_DUMP_DIR").filter(|d| !d.is_empty())?;
            let filter = std::env::var("DYCOKE_DUMP_FILTER").ok().filter(|f| !f.is_empty());
            Some(Config { dir: PathBuf::from(dir), filter })
        })
        .as_ref()
}

/// Whether `DYCOKE_DUMP_DIR` asks for a dump.
pub fn enabled() -> bool {
    config().is_some()
}

/// Times each name was written, and whether a write failure was reported (once is enough).
#[derive(Default)]
struct State {
    calls: HashMap<String, u64>,
    warned: bool,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

/// Whether a node's name is one to write (see the module's notes).
fn wanted(name: &str, config: &Config) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && config.filter.as_deref().is_none_or(|f| name.contains(f))
}

/// Converts `n` values of type `ty` at the start of `bytes` to F32; None for types without a
/// conversion.
fn convert(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Option<()> {
    macro_rules! ints {
        ($t:ty) => {{
            let size = std::mem::size_of::<$t>();
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(size)) {
                *o = <$t>::from_le_bytes(b.try_into().ok()?) as f32;
            }
        }};
    }
    match ty {
        GgmlType::I8 => ints!(i8),
        GgmlType::I16 => ints!(i16),
        GgmlType::I32 => ints!(i32),
        GgmlType::I64 => ints!(i64),
        GgmlType::F64 => ints!(f64),
        t if super::can_dequantize(t) => {
            let len = t.row_bytes(out.len() as u64)? as usize;
            super::dequantize(t, bytes.get(..len)?, out);
        }
        _ => return None,
    }
    Some(())
}

/// The values of a tensor laid out by `ne` and byte strides `nb` in `bytes`, as F32 in ggml's
/// order. Rows must be whole blocks; element strides are followed for one-value blocks.
fn to_f32(ty: GgmlType, ne: [i64; 4], nb: [usize; 4], bytes: &[u8]) -> Option<Vec<f32>> {
    let ne: Vec<usize> = ne.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let (block, block_bytes) = (ty.block_size() as usize, ty.block_bytes() as usize);
    let mut out = vec![0f32; ne.iter().product()];
    let row_contiguous = nb[0] == block_bytes && ne[0] % block == 0;
    if !row_contiguous && block != 1 {
        return None;
    }
    let mut at = 0;
    for i3 in 0..ne[3] {
        for i2 in 0..ne[2] {
            for i1 in 0..ne[1] {
                let base = i1 * nb[1] + i2 * nb[2] + i3 * nb[3];
                let row = &mut out[at..at + ne[0]];
                if row_contiguous {
                    convert(ty, bytes.get(base..)?, row)?;
                } else {
                    for (i0, o) in row.iter_mut().enumerate() {
                        let from = base + i0 * nb[0];
                        convert(ty, bytes.get(from..from + block_bytes)?, std::slice::from_mut(o))?;
                    }
                }
                at += ne[0];
            }
        }
    }
    Some(out)
}

fn write(config: &Config, name: &str, ty: GgmlType, ne: [i64; 4], values: &[f32]) -> std::io::Result<()> {
    let call = {
        let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
        let c = s.calls.entry(name.to_string()).or_insert(0);
        *c += 1;
        *c - 1
    };
    std::fs::create_dir_all(&config.dir)?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(config.dir.join(format!("{call}-{name}.f32")), bytes)?;
    let meta = serde_json::json!({ "name": name, "type": ty.name(), "ne": ne, "call": call });
    std::fs::write(config.dir.join(format!("{call}-{name}.json")), meta.to_string())
}

fn warn_once(message: String) {
    let mut s = state().lock().unwrap_or_else(|e| e.into_inner());
    if !s.warned {
        s.warned = true;
        eprintln!("activation dump: {message}");
    }
}

/// ggml's scheduler callback: asked first whether a node is wanted, then called once it is
/// computed. Never stops the computation.
pub(super) unsafe extern "C" fn eval_callback(t: *mut sys::ggml_tensor, ask: bool, _user: *mut c_void) -> bool {
    let Some(config) = config() else { return !ask };
    // SAFETY: ggml passes a node of the graph being computed, valid for the call; its name is
    // NUL-terminated within its fixed array.
    let t = unsafe { &*t };
    let name = unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy();
    if ask {
        return wanted(&name, config);
    }
    if !wanted(&name, config) || t.buffer.is_null() || t.data.is_null() {
        return true;
    }
    let Some(ty) = GgmlType::from_id(t.type_) else { return true };
    // SAFETY: the node is computed (ggml synchronized its backend before this call) and allocated
    // in a backend buffer; ggml_nbytes covers every byte its strides reach.
    let bytes = unsafe {
        let n = sys::ggml_nbytes(t);
        let mut bytes = vec![0u8; n];
        sys::ggml_backend_tensor_get(t, bytes.as_mut_ptr().cast(), 0, n);
        bytes
    };
    match to_f32(ty, t.ne, t.nb, &bytes) {
        Some(values) => {
            if let Err(e) = write(config, &name, ty, t.ne, &values) {
                warn_once(format!("cannot write to {}: {e}", config.dir.display()));
            }
        }
        None => warn_once(format!("{name}: {ty} values with these strides are not converted")),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_strides() {
        let config = Config { dir: PathBuf::new(), filter: Some("l_out".into()) };
        assert!(wanted("l_out-3", &config));
        assert!(!wanted("attn_out-3", &config));
        assert!(!wanted("l_out-3 (view)", &config));
        let all = Config { filter: None, ..config };
        assert!(wanted("v_ttm_rows", &all) && !wanted("", &all));

        // A transposed 2 x 3 F32 matrix: element (i0, i1) at i0 * 12 + i1 * 4.
        let stored: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|v| v.to_le_bytes()).collect();
        let got = to_f32(GgmlType::F32, [2, 3, 1, 1], [12, 4, 24, 24], &stored).unwrap();
        assert_eq!(got, [1., 4., 2., 5., 3., 6.]);
        let ints: Vec<u8> = [7i32, -2].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(GgmlType::I32, [2, 1, 1, 1], [4, 8, 8, 8], &ints).unwrap(), [7., -2.]);
        let halves: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(to_f32(GgmlType::F16, [2, 1, 1, 1], [2, 4, 4, 4], &halves).unwrap(), [0.5, -3.0]);
        assert_eq!(to_f32(GgmlType::F32, [4, 1, 1, 1], [4, 16, 16, 16], &stored[..8]), None, "too few bytes");
    }
}
