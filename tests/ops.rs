//! Every ggml operation the models use, through the engine's own wrappers, on every device of the
//! build, against a plain Rust reference written here (f64 accumulation), compared by normalised
//! mean squared error, NMSE = sum((out - ref)^2) / sum(ref^2), as llama.cpp's test-backend-ops
//! does. A new backend runs this first: each case prints its device, its NMSE and its bound.
//!
//! Bounds: 1e-7 where the device computes in F32 throughout (only the order of additions may
//! differ), 0 for operations that only move or convert data exactly, and looser ones, each explained
//! where it is set, where ggml itself rounds an operand to a narrower type (F16, BF16, the 8-bit
//! activation blocks of quantized products). Shapes are deliberately not multiples of SIMD widths.
//!
//! The devices are the build's, and the device of a `dycoke rpc-server` on loopback (ggml's RPC
//! backend, whose memory is not this process's), started once for this test binary.
//!
//! Quantized weights come from ggml's own quantizer; the reference reads them back with decoders
//! written here from the block layouts, and one case checks ggml's own decoding (the token embedding
//! path) against them.

mod common;

use std::sync::{Arc, OnceLock};

use dycoke::ggml::custom::{HostOp, OpInput, OpOutput};
use dycoke::ggml::{BufferType, Context, Device, GgmlType, RopeParams, ScaleMode, Scheduler, Tensor, ROPE_TYPE_NEOX};
use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const THREADS: usize = 2;
const NODES: usize = 64;

/// Exact F32 arithmetic, at most reordered.
const F32_EXACT: f64 = 1e-7;

/// Every device of the build, and an RPC server's.
fn devices() -> Vec<Device> {
    static SERVER: OnceLock<common::rpc::RpcServer> = OnceLock::new();
    let server = SERVER.get_or_init(common::rpc::RpcServer::start);
    let rpc = dycoke::model::add_rpc_servers(std::slice::from_ref(&server.endpoint)).expect("the RPC server answers");
    let all = Device::all();
    assert!(rpc.iter().all(|name| all.iter().any(|d| d.name().eq_ignore_ascii_case(name))), "RPC devices {rpc:?} not among {all:?}");
    all
}

// ---- running a graph ---------------------------------------------------------------------------

enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bytes(Vec<u8>),
}

/// A graph input: a scheduler-allocated input, or a weight placed in a buffer of a given type (as
/// the loader places model weights, repacked CPU layouts included).
struct In {
    ty: GgmlType,
    ne: Vec<i64>,
    data: Data,
    weight: Option<BufferType>,
}

impl In {
    fn f32(ne: &[i64], v: Vec<f32>) -> In {
        In { ty: GgmlType::F32, ne: ne.to_vec(), data: Data::F32(v), weight: None }
    }
    fn f16(ne: &[i64], v: Vec<f16>) -> In {
        In { ty: GgmlType::F16, ne: ne.to_vec(), data: Data::F16(v), weight: None }
    }
    fn i32(ne: &[i64], v: Vec<i32>) -> In {
        In { ty: GgmlType::I32, ne: ne.to_vec(), data: Data::I32(v), weight: None }
    }
    fn i64(ne: &[i64], v: Vec<i64>) -> In {
        In { ty: GgmlType::I64, ne: ne.to_vec(), data: Data::I64(v), weight: None }
    }
    fn bytes(ty: GgmlType, ne: &[i64], v: Vec<u8>) -> In {
        In { ty, ne: ne.to_vec(), data: Data::Bytes(v), weight: None }
    }
    fn in_buffer(mut self, buft: BufferType) -> In {
        self.weight = Some(buft);
        self
    }

    fn write(&self, t: &Tensor) {
        match &self.data {
            Data::F32(v) => t.write_f32(v),
            Data::F16(v) => t.write_f16(v),
            Data::I32(v) => t.write_i32(v),
            Data::I64(v) => t.write_i64(v),
            Data::Bytes(v) => t.write_bytes(v),
        }
    }
}

/// Builds a graph over `inputs` with `build`, runs it on `device` (with the CPU backend behind it,
/// as the engine sets up) and reads the F32 output back.
fn compute(device: Device, inputs: &[In], build: impl FnOnce(&mut Context, &[Tensor]) -> Tensor) -> Vec<f32> {
    let mut weight_ctxs = Vec::new();
    let mut g = Context::new(inputs.len() + NODES, NODES);
    let mut tensors = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        match input.weight {
            Some(buft) => {
                let mut c = Context::new(1, 0);
                let t = c.new_tensor(input.ty, &input.ne);
                let buffer = buft.alloc_context_tensors(&c).expect("weight buffer");
                buffer.mark_weights();
                input.write(&t);
                tensors.push(t);
                weight_ctxs.push(c);
            }
            None => tensors.push(g.input(&format!("in{i}"), input.ty, &input.ne)),
        }
    }
    let out = build(&mut g, &tensors);
    g.set_output(&out);
    let mut graph = g.new_graph(NODES);
    graph.expand(&out);
    let mut sched = Scheduler::for_device(device, THREADS, NODES).expect("the device starts");
    sched.alloc(&graph, &g).expect("graph allocation");
    for (input, t) in inputs.iter().zip(&tensors) {
        if input.weight.is_none() {
            input.write(t);
        }
    }
    sched.compute(&graph).expect("graph computes");
    out.read_f32()
}

fn nmse(out: &[f32], want: &[f64]) -> f64 {
    let err: f64 = out.iter().zip(want).map(|(&o, &w)| (f64::from(o) - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    err / norm
}

/// Compares and prints one case; a failure is recorded, so that one run shows every case.
fn check(failures: &mut Vec<String>, case: &str, device: Device, out: &[f32], want: &[f64], bound: f64) {
    let line = if out.len() != want.len() {
        format!("{case} on {}: {} values, expected {}", device.name(), out.len(), want.len())
    } else {
        let e = nmse(out, want);
        eprintln!("{:<58} {:<6} NMSE {e:.2e} (bound {bound:.0e})", case, device.name());
        // Written so that NaN fails.
        if e <= bound {
            return;
        }
        format!("{case} on {}: NMSE {e:.3e} above {bound:.0e}", device.name())
    };
    failures.push(line);
}

fn finish(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn ne4(ne: &[i64]) -> [usize; 4] {
    let mut out = [1usize; 4];
    for (o, &n) in out.iter_mut().zip(ne) {
        *o = n as usize;
    }
    out
}

// ---- decoding weights, from the block layouts ---------------------------------------------------

fn half_at(b: &[u8], i: usize) -> f64 {
    f64::from(f16::from_le_bytes([b[i], b[i + 1]]))
}

/// The values of `n` elements of type `ty` stored in `bytes` (whole blocks).
fn decode(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(ty.block_bytes() as usize);
    match ty {
        GgmlType::F32 => out.extend(bytes.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| f64::from(f16::from_le_bytes([b[0], b[1]])))),
        GgmlType::Bf16 => out.extend(bytes.chunks_exact(2).map(|b| f64::from(bf16::from_le_bytes([b[0], b[1]])))),
        // d (f16), 32 x i8: x = d q
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = half_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * f64::from(q as i8)));
            }
        }
        // d (f16), 16 bytes of nibbles: element j is the low nibble of byte j, element j + 16 its
        // high nibble; x = d (q - 8)
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = half_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| d * (f64::from(q & 15) - 8.0)));
                out.extend(qs.iter().map(|&q| d * (f64::from(q >> 4) - 8.0)));
            }
        }
        // d (f16), 32 high bits (u32, bit j for element j), 16 bytes of low nibbles as Q4_0;
        // x = d (q - 16)
        GgmlType::Q5_0 => {
            for b in blocks {
                let d = half_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                let high = |j: usize| (((qh >> j) & 1) << 4) as u8;
                out.extend(qs.iter().enumerate().map(|(j, &q)| d * (f64::from((q & 15) | high(j)) - 16.0)));
                out.extend(qs.iter().enumerate().map(|(j, &q)| d * (f64::from((q >> 4) | high(j + 16)) - 16.0)));
            }
        }
        // d, dmin (f16), 12 bytes packing eight 6-bit (scale, min) pairs, 128 bytes of nibbles: four
        // runs of 64 elements, each the low then the high nibbles of 32 bytes with its own pair;
        // x = d scale q - dmin min
        GgmlType::Q4K => {
            for b in blocks {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let sc = &b[4..16];
                let pair = |j: usize| -> (u8, u8) {
                    if j < 4 {
                        (sc[j] & 63, sc[j + 4] & 63)
                    } else {
                        ((sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4))
                    }
                };
                for run in 0..4 {
                    let qs = &b[16 + 32 * run..16 + 32 * (run + 1)];
                    let (s1, m1) = pair(2 * run);
                    let (s2, m2) = pair(2 * run + 1);
                    out.extend(qs.iter().map(|&q| d * f64::from(s1) * f64::from(q & 15) - dmin * f64::from(m1)));
                    out.extend(qs.iter().map(|&q| d * f64::from(s2) * f64::from(q >> 4) - dmin * f64::from(m2)));
                }
            }
        }
        // 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 x i8 scales, d (f16): two
        // halves of 128 elements; in each, element l + 32 k (k = 0..4) takes nibble k / 2 of
        // ql[l + 32 (k % 2)] and bits 2k.. of qh[l], scale 2k + l / 16; x = d scale (q - 32)
        GgmlType::Q6K => {
            for b in blocks {
                let d = half_at(b, 208);
                for half in 0..2 {
                    let ql = &b[64 * half..64 * half + 64];
                    let qh = &b[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &b[192 + 8 * half..192 + 8 * half + 8];
                    for k in 0..4 {
                        for l in 0..32 {
                            let low = ql[l + 32 * (k % 2)];
                            let low = if k < 2 { low & 15 } else { low >> 4 };
                            let q = i32::from(low | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                            out.push(d * f64::from(sc[2 * k + l / 16] as i8) * f64::from(q));
                        }
                    }
                }
            }
        }
        other => panic!("no reference decoder for {other}"),
    }
    assert_eq!(out.len(), n, "{ty}: decoded {} of {n} values", out.len());
    out
}

/// Random weights of `ty`, [k, m]: their bytes and the values they hold.
fn weights(r: &mut ChaCha8Rng, ty: GgmlType, k: usize, m: usize) -> (Vec<u8>, Vec<f64>) {
    let v = uniform(r, k * m);
    let bytes = match ty {
        GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        GgmlType::Bf16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        _ => dycoke::ggml::quantize_rows(ty, &v, k),
    };
    let values = decode(ty, &bytes, k * m);
    (bytes, values)
}

// ---- references --------------------------------------------------------------------------------

/// a [k, m, a2, a3] x b [k, n, b2, b3] -> [m, n, b2, b3], a broadcast over b's outer dimensions.
fn ref_mul_mat(a: &[f64], an: [usize; 4], b: &[f64], bn: [usize; 4]) -> Vec<f64> {
    let (k, m, n) = (an[0], an[1], bn[1]);
    let mut out = Vec::with_capacity(m * n * bn[2] * bn[3]);
    for i3 in 0..bn[3] {
        for i2 in 0..bn[2] {
            let (a2, a3) = (i2 / (bn[2] / an[2]), i3 / (bn[3] / an[3]));
            let a_mat = &a[(a2 + an[2] * a3) * k * m..];
            let b_mat = &b[(i2 + bn[2] * i3) * k * n..];
            for j in 0..n {
                for i in 0..m {
                    out.push((0..k).map(|l| a_mat[i * k + l] * b_mat[j * k + l]).sum());
                }
            }
        }
    }
    out
}

/// ggml_permute's rule: source dimension i becomes dimension axes[i]; returns the contiguous result.
fn ref_permute(x: &[f64], ne: [usize; 4], axes: [usize; 4]) -> (Vec<f64>, [usize; 4]) {
    let mut out_ne = [0; 4];
    for i in 0..4 {
        out_ne[axes[i]] = ne[i];
    }
    let mut out = Vec::with_capacity(x.len());
    for o3 in 0..out_ne[3] {
        for o2 in 0..out_ne[2] {
            for o1 in 0..out_ne[1] {
                for o0 in 0..out_ne[0] {
                    let o = [o0, o1, o2, o3];
                    let s: [usize; 4] = std::array::from_fn(|i| o[axes[i]]);
                    out.push(x[s[0] + ne[0] * (s[1] + ne[1] * (s[2] + ne[2] * s[3]))]);
                }
            }
        }
    }
    (out, out_ne)
}

fn softmax(v: &mut [f64]) {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = v.iter_mut().map(|x| {
        *x = (*x - max).exp();
        *x
    }).sum();
    v.iter_mut().for_each(|x| *x /= sum);
}

/// Attention as the models define it. q [d, n_q, n_head, b], k and v [d, n_kv, n_head_kv, b]
/// (logical layouts), mask [n_kv, n_q] or none. Result in flash_attn_ext's layout
/// [d, n_head, n_q, b].
#[allow(clippy::too_many_arguments)]
fn ref_attention(q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f64]>, d: usize, n_q: usize, n_kv: usize, heads: (usize, usize), b: usize, scale: f64) -> Vec<f64> {
    let (n_head, n_head_kv) = heads;
    let mut out = vec![0.0; d * n_head * n_q * b];
    for ib in 0..b {
        for h in 0..n_head {
            let hk = h / (n_head / n_head_kv);
            for i in 0..n_q {
                let qv = &q[d * (i + n_q * (h + n_head * ib))..][..d];
                let mut s: Vec<f64> = (0..n_kv)
                    .map(|j| {
                        let kv = &k[d * (j + n_kv * (hk + n_head_kv * ib))..][..d];
                        let dot: f64 = qv.iter().zip(kv).map(|(a, b)| a * b).sum();
                        dot * scale + mask.map_or(0.0, |m| m[i * n_kv + j])
                    })
                    .collect();
                softmax(&mut s);
                let o = &mut out[d * (h + n_head * (i + n_q * ib))..][..d];
                for (j, p) in s.iter().enumerate() {
                    let vv = &v[d * (j + n_kv * (hk + n_head_kv * ib))..][..d];
                    for (o, x) in o.iter_mut().zip(vv) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    out
}

/// torch.nn.functional.interpolate(mode="bilinear", align_corners=False) of [w, h, c] planes.
fn ref_bilinear(x: &[f64], (w, h, c): (usize, usize, usize), (ow, oh): (usize, usize)) -> Vec<f64> {
    let source = |o: usize, size_in: usize, size_out: usize| {
        let s = ((o as f64 + 0.5) * size_in as f64 / size_out as f64 - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(size_in - 1);
        let i1 = (i0 + 1).min(size_in - 1);
        (i0, i1, s - i0 as f64)
    };
    let mut out = Vec::with_capacity(ow * oh * c);
    for ic in 0..c {
        let plane = &x[ic * w * h..][..w * h];
        for oy in 0..oh {
            let (y0, y1, ly) = source(oy, h, oh);
            for ox in 0..ow {
                let (x0, x1, lx) = source(ox, w, ow);
                let at = |yy: usize, xx: usize| plane[yy * w + xx];
                let top = at(y0, x0) * (1.0 - lx) + at(y0, x1) * lx;
                let bottom = at(y1, x0) * (1.0 - lx) + at(y1, x1) * lx;
                out.push(top * (1.0 - ly) + bottom * ly);
            }
        }
    }
    out
}


fn f16_values(v: &[f16]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

// ---- matrix products ----------------------------------------------------------------------------

/// The bound of a product with weights of `ty`, from what ggml rounds the activations to.
fn mul_mat_bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => F32_EXACT,
        // Activations rounded to F16 (11-bit significand): relative error up to 2^-12 per product.
        GgmlType::F16 => 1e-6,
        // Activations rounded to BF16 (8-bit significand): up to 2^-9 per product.
        GgmlType::Bf16 => 3e-5,
        // Activations quantized to 8-bit blocks (Q8_0 or Q8_K): up to 1/254 of a block's largest
        // value per element.
        _ => 2e-4,
    }
}

#[test]
fn mul_mat_with_every_weight_type() {
    let mut failures = Vec::new();
    let types = [GgmlType::F32, GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K];
    for device in devices() {
        for (ti, &ty) in types.iter().enumerate() {
            // Rows of 67 values for plain types (no SIMD width divides it), of a few blocks otherwise.
            let k = match ty.block_size() {
                1 => 67,
                32 => 96,
                _ => 512,
            };
            let mut bufts = vec![device.buffer_type()];
            bufts.extend(device.extra_buffer_types());
            // 33 output rows fit no repacked layout; 64 do, where the layout takes the type at all.
            for m in [33, 64] {
                for n in [1, 7, 37] {
                    let mut r = rng(100 + ti as u64 * 10 + n as u64);
                    let (bytes, a) = weights(&mut r, ty, k, m);
                    let x = uniform(&mut r, k * n);
                    let want = ref_mul_mat(&a, [k, m, 1, 1], &widen(&x), [k, n, 1, 1]);
                    for (bi, buft) in bufts.iter().enumerate() {
                        if bi > 0 && !device.weight_buffer_supported(buft, ty, [k as i64, m as i64]) {
                            continue;
                        }
                        let inputs = [
                            In::bytes(ty, &[k as i64, m as i64], bytes.clone()).in_buffer(*buft),
                            In::f32(&[k as i64, n as i64], x.clone()),
                        ];
                        let out = compute(device, &inputs, |g, t| g.mul_mat(&t[0], &t[1]));
                        let case = format!("mul_mat {ty} [{k}, {m}] x [{k}, {n}] in {}", buft.name());
                        check(&mut failures, &case, device, &out, &want, mul_mat_bound(ty));
                    }
                }
            }
        }
    }
    finish(failures);
}

/// The pruned attention's scores: K as the cache holds it (F16 or Q8_0 rows of all KV heads),
/// viewed per head and permuted, times the permuted queries, query heads sharing their group's K.
#[test]
fn mul_mat_over_a_permuted_cache_view() {
    let mut failures = Vec::new();
    let (d, n_kv, n_head, n_head_kv) = (64usize, 45usize, 6usize, 2usize);
    for device in devices() {
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let mut r = rng(7);
            let row = d * n_head_kv;
            let (bytes, cache) = weights(&mut r, ty, row, n_kv);
            let q = uniform(&mut r, d * n_head);
            // Logical K [d, n_kv, n_head_kv] from the cache rows.
            let mut kc = Vec::new();
            for h in 0..n_head_kv {
                for j in 0..n_kv {
                    kc.extend_from_slice(&cache[j * row + h * d..][..d]);
                }
            }
            // Queries [d, n_head, 1] permuted to [d, 1, n_head].
            let want = ref_mul_mat(&kc, [d, n_kv, n_head_kv, 1], &widen(&q), [d, 1, n_head, 1]);
            let inputs = [In::bytes(ty, &[row as i64, n_kv as i64], bytes), In::f32(&[d as i64, n_head as i64, 1], q)];
            let out = compute(device, &inputs, |g, t| {
                let head = ty.row_bytes(d as u64).unwrap() as usize;
                let row_bytes = ty.row_bytes(row as u64).unwrap() as usize;
                let v = g.view(&t[0], &[d as i64, n_head_kv as i64, n_kv as i64], &[head, row_bytes], 0);
                let kc = g.permute(&v, [0, 2, 1, 3]);
                let qp = g.permute(&t[1], [0, 2, 1, 3]);
                g.mul_mat(&kc, &qp)
            });
            check(&mut failures, &format!("mul_mat {ty} cache view x queries, {n_head}/{n_head_kv} heads"), device, &out, &want, mul_mat_bound(ty));
        }
    }
    finish(failures);
}

/// The token embedding is read with ggml's own decoding (to F32, on the host).
#[test]
fn dequantize_matches_the_block_layouts() {
    let mut failures = Vec::new();
    for (i, ty) in [GgmlType::F16, GgmlType::Bf16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4K, GgmlType::Q6K].into_iter().enumerate() {
        let mut r = rng(40 + i as u64);
        let (bytes, want) = weights(&mut r, ty, 512, 3);
        let mut out = vec![0f32; 512 * 3];
        dycoke::ggml::dequantize(ty, &bytes, &mut out);
        // Decoding is exact: every value is a small integer times an F16 scale.
        check(&mut failures, &format!("dequantize {ty}"), Device::cpu(), &out, &want, 0.0);
    }
    finish(failures);
}

// ---- element-wise operations and norms ----------------------------------------------------------

#[test]
fn add_and_mul_broadcast() {
    let mut failures = Vec::new();
    for device in devices() {
        // A bias over tokens, and the position embedding over a batch of images.
        for (an, bn) in [([37i64, 5, 1], [37i64, 1, 1]), ([37, 5, 3], [37, 5, 1])] {
            let (a_ne, b_ne) = (ne4(&an), ne4(&bn));
            let mut r = rng(3);
            let a = uniform(&mut r, a_ne.iter().product());
            let b = uniform(&mut r, b_ne.iter().product());
            let at = |i: usize| {
                let (i0, i1, i2) = (i % a_ne[0], i / a_ne[0] % a_ne[1], i / (a_ne[0] * a_ne[1]));
                f64::from(b[(i0 % b_ne[0]) + b_ne[0] * ((i1 % b_ne[1]) + b_ne[1] * (i2 % b_ne[2]))])
            };
            let sum: Vec<f64> = a.iter().enumerate().map(|(i, &x)| f64::from(x) + at(i)).collect();
            let product: Vec<f64> = a.iter().enumerate().map(|(i, &x)| f64::from(x) * at(i)).collect();
            let inputs = [In::f32(&an, a.clone()), In::f32(&bn, b.clone())];
            let out = compute(device, &inputs, |g, t| g.add(&t[0], &t[1]));
            check(&mut failures, &format!("add {an:?} + {bn:?}"), device, &out, &sum, F32_EXACT);
            let out = compute(device, &inputs, |g, t| g.mul(&t[0], &t[1]));
            check(&mut failures, &format!("mul {an:?} * {bn:?}"), device, &out, &product, F32_EXACT);
        }
    }
    finish(failures);
}

#[test]
fn norms() {
    let mut failures = Vec::new();
    let (n, rows, eps) = (67usize, 5usize, 1e-6f32);
    for device in devices() {
        let mut r = rng(4);
        // An offset makes the mean matter to LayerNorm.
        let x: Vec<f32> = uniform(&mut r, n * rows).into_iter().map(|v| v * 3.0 + 0.5).collect();
        let mut rms = Vec::new();
        let mut layer = Vec::new();
        for row in widen(&x).chunks(n) {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / n as f64;
            rms.extend(row.iter().map(|v| v / (ms + f64::from(eps)).sqrt()));
            let mean = row.iter().sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
            layer.extend(row.iter().map(|v| (v - mean) / (var + f64::from(eps)).sqrt()));
        }
        let inputs = [In::f32(&[n as i64, rows as i64], x.clone())];
        let out = compute(device, &inputs, |g, t| g.rms_norm(&t[0], eps));
        check(&mut failures, &format!("rms_norm [{n}, {rows}]"), device, &out, &rms, F32_EXACT);
        let out = compute(device, &inputs, |g, t| g.norm(&t[0], eps));
        check(&mut failures, &format!("norm [{n}, {rows}]"), device, &out, &layer, F32_EXACT);
    }
    finish(failures);
}

#[test]
fn activations() {
    let mut failures = Vec::new();
    let n = 1003usize;
    for device in devices() {
        let mut r = rng(5);
        let x: Vec<f32> = uniform(&mut r, n).into_iter().map(|v| v * 6.0).collect();
        let up = uniform(&mut r, n);
        let xs = widen(&x);
        let erf: Vec<f64> = xs.iter().map(|&v| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))).collect();
        let tanh: Vec<f64> = xs
            .iter()
            .map(|&v| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh()))
            .collect();
        let swiglu: Vec<f64> = xs.iter().zip(&up).map(|(&g, &u)| g / (1.0 + (-g).exp()) * f64::from(u)).collect();
        let one = [In::f32(&[n as i64], x.clone())];
        let out = compute(device, &one, |g, t| g.gelu_erf(&t[0]));
        check(&mut failures, &format!("gelu_erf [{n}]"), device, &out, &erf, F32_EXACT);
        let out = compute(device, &one, |g, t| g.gelu_tanh_precise(&t[0]));
        check(&mut failures, &format!("gelu_tanh_precise (custom) [{n}]"), device, &out, &tanh, F32_EXACT);
        let two = [In::f32(&[n as i64], x.clone()), In::f32(&[n as i64], up.clone())];
        let out = compute(device, &two, |g, t| g.swiglu_split(&t[0], &t[1]));
        check(&mut failures, &format!("swiglu_split [{n}]"), device, &out, &swiglu, F32_EXACT);
    }
    finish(failures);
}

// ---- positions and attention --------------------------------------------------------------------

#[test]
fn rope_neox() {
    let mut failures = Vec::new();
    let base = 1_000_000.0f32;
    for device in devices() {
        for (hd, n_head, n_tok) in [(64usize, 3usize, 5usize), (18, 2, 7)] {
            let mut r = rng(6);
            let x = uniform(&mut r, hd * n_head * n_tok);
            // Positions as a long video prompt has them, not in order.
            let pos: Vec<i32> = (0..n_tok).map(|_| r.random_range(0..6000)).collect();
            let mut want = vec![0.0; x.len()];
            let half = hd / 2;
            for t in 0..n_tok {
                for h in 0..n_head {
                    let v = &x[hd * (h + n_head * t)..][..hd];
                    let o = &mut want[hd * (h + n_head * t)..][..hd];
                    for i in 0..half {
                        let theta = f64::from(pos[t]) * f64::from(base).powf(-2.0 * i as f64 / hd as f64);
                        let (x0, x1) = (f64::from(v[i]), f64::from(v[i + half]));
                        o[i] = x0 * theta.cos() - x1 * theta.sin();
                        o[i + half] = x0 * theta.sin() + x1 * theta.cos();
                    }
                }
            }
            let p = RopeParams {
                n_dims: hd as i32,
                mode: ROPE_TYPE_NEOX,
                n_ctx_orig: 32768,
                freq_base: base,
                freq_scale: 1.0,
                ext_factor: 0.0,
                attn_factor: 1.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
            };
            let inputs = [In::f32(&[hd as i64, n_head as i64, n_tok as i64], x), In::i32(&[n_tok as i64], pos)];
            let out = compute(device, &inputs, |g, t| g.rope_ext(&t[0], &t[1], &p));
            // Not exact: ggml computes the angles in F32, from positions up to 6000 and powers of
            // the base taken step by step, so an angle may be off by a few 6000 x 2^-24.
            check(&mut failures, &format!("rope NEOX [{hd}, {n_head}, {n_tok}]"), device, &out, &want, 1e-7);
        }
    }
    finish(failures);
}

/// A causal mask over `n_kv` entries for `n_q` queries at the end, plus a few hidden entries (the
/// padding and pruned rows the engine masks).
fn mask(n_kv: usize, n_q: usize) -> Vec<f16> {
    let mut m = vec![f16::ZERO; n_kv * n_q];
    for i in 0..n_q {
        for j in 0..n_kv {
            if j > n_kv - n_q + i || j % 7 == 3 {
                m[i * n_kv + j] = f16::NEG_INFINITY;
            }
        }
    }
    m
}

#[test]
fn soft_max_with_mask() {
    let mut failures = Vec::new();
    let (n_kv, n_q, n_head, scale) = (45usize, 3usize, 4usize, 0.125f32);
    for device in devices() {
        let mut r = rng(8);
        let a: Vec<f32> = uniform(&mut r, n_kv * n_q * n_head).into_iter().map(|v| v * 8.0).collect();
        let m = mask(n_kv, n_q);
        let mut want = Vec::new();
        for h in 0..n_head {
            for i in 0..n_q {
                let mut row: Vec<f64> = (0..n_kv)
                    .map(|j| f64::from(a[j + n_kv * (i + n_q * h)]) * f64::from(scale) + f64::from(m[i * n_kv + j]))
                    .collect();
                softmax(&mut row);
                want.extend(row);
            }
        }
        let inputs = [In::f32(&[n_kv as i64, n_q as i64, n_head as i64], a), In::f16(&[n_kv as i64, n_q as i64], m)];
        let out = compute(device, &inputs, |g, t| g.soft_max_ext(&t[0], Some(&t[1]), scale));
        check(&mut failures, &format!("soft_max_ext [{n_kv}, {n_q}, {n_head}] F16 mask"), device, &out, &want, F32_EXACT);
    }
    finish(failures);
}

/// The language model's attention: queries [d, n_head, n_q] permuted as `nn::flash_attention`
/// does, K and V as views of cache rows (F16 or Q8_0), grouped heads, the causal mask.
#[test]
fn flash_attention_over_the_cache() {
    let mut failures = Vec::new();
    let (d, n_head, n_head_kv) = (64usize, 6usize, 2usize);
    for device in devices() {
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            // One query (decode), a small chunk, and a chunk of more queries than ggml's CPU tile.
            for (n_q, n_kv) in [(1usize, 45usize), (5, 45), (70, 131)] {
                let mut r = rng(9 + n_q as u64);
                let row = d * n_head_kv;
                let (k_bytes, k_cache) = weights(&mut r, ty, row, n_kv);
                let (v_bytes, v_cache) = weights(&mut r, ty, row, n_kv);
                let q = uniform(&mut r, d * n_head * n_q);
                let m = mask(n_kv, n_q);
                let per_head = |cache: &[f64]| {
                    let mut out = Vec::new();
                    for h in 0..n_head_kv {
                        for j in 0..n_kv {
                            out.extend_from_slice(&cache[j * row + h * d..][..d]);
                        }
                    }
                    out
                };
                let (qp, _) = ref_permute(&widen(&q), [d, n_head, n_q, 1], [0, 2, 1, 3]);
                let scale = 1.0 / (d as f32).sqrt();
                let want = ref_attention(&qp, &per_head(&k_cache), &per_head(&v_cache), Some(&f16_values(&m)), d, n_q, n_kv, (n_head, n_head_kv), 1, f64::from(scale));
                let inputs = [
                    In::f32(&[d as i64, n_head as i64, n_q as i64], q),
                    In::bytes(ty, &[row as i64, n_kv as i64], k_bytes),
                    In::bytes(ty, &[row as i64, n_kv as i64], v_bytes),
                    In::f16(&[n_kv as i64, n_q as i64], m),
                ];
                let out = compute(device, &inputs, |g, t| {
                    let head = ty.row_bytes(d as u64).unwrap() as usize;
                    let row_bytes = ty.row_bytes(row as u64).unwrap() as usize;
                    let mut heads = |c: &Tensor| {
                        let v = g.view(c, &[d as i64, n_head_kv as i64, n_kv as i64], &[head, row_bytes], 0);
                        g.permute(&v, [0, 2, 1, 3])
                    };
                    let (k, v) = (heads(&t[1]), heads(&t[2]));
                    let q = g.permute(&t[0], [0, 2, 1, 3]);
                    g.flash_attn_ext(&q, &k, &v, Some(&t[3]), scale)
                });
                // ggml's CPU kernel rounds the queries to K's dot type (F16, or Q8_0 blocks) and,
                // for chunks of fewer queries than its tile, accumulates V in F16 (about 1e-6 here,
                // against 1e-13 for the 70-query chunk).
                let bound = if ty == GgmlType::F16 { 1e-5 } else { 2e-4 };
                check(&mut failures, &format!("flash_attn_ext {ty} K/V, {n_q} queries over {n_kv}"), device, &out, &want, bound);
            }
        }
    }
    finish(failures);
}

/// The vision tower's attention: F32 K and V from permuted projections, a batch of images, no mask.
#[test]
fn flash_attention_over_image_patches() {
    let mut failures = Vec::new();
    let (d, n_head, n, b) = (24usize, 3usize, 29usize, 2usize);
    for device in devices() {
        let mut r = rng(10);
        let len = d * n_head * n * b;
        let (q, k, v) = (uniform(&mut r, len), uniform(&mut r, len), uniform(&mut r, len));
        let perm = |x: &[f32]| ref_permute(&widen(x), [d, n_head, n, b], [0, 2, 1, 3]).0;
        let scale = 1.0 / (d as f32).sqrt();
        let want = ref_attention(&perm(&q), &perm(&k), &perm(&v), None, d, n, n, (n_head, n_head), b, f64::from(scale));
        let shape = [d as i64, n_head as i64, n as i64, b as i64];
        let inputs = [In::f32(&shape, q), In::f32(&shape, k), In::f32(&shape, v)];
        let out = compute(device, &inputs, |g, t| {
            let q = g.permute(&t[0], [0, 2, 1, 3]);
            let k = g.permute(&t[1], [0, 2, 1, 3]);
            let v = g.permute(&t[2], [0, 2, 1, 3]);
            g.flash_attn_ext(&q, &k, &v, None, scale)
        });
        // With F32 K and V nothing is rounded to a narrower type: the vision tower's parity with
        // transformers (F32 weights) depends on it.
        check(&mut failures, &format!("flash_attn_ext F32 K/V [{d}, {n}, {n_head}, {b}]"), device, &out, &want, F32_EXACT);
    }
    finish(failures);
}

// ---- moving data --------------------------------------------------------------------------------

#[test]
fn reshape_permute_view_cont() {
    let mut failures = Vec::new();
    for device in devices() {
        let mut r = rng(11);
        // The pooling layout changes and the attention head split.
        let ne = [7usize, 5, 3, 2];
        let x = uniform(&mut r, ne.iter().product());
        for axes in [[0usize, 2, 1, 3], [2, 0, 1, 3], [1, 2, 0, 3]] {
            let (want, _) = ref_permute(&widen(&x), ne, axes);
            let inputs = [In::f32(&[(ne[0] * ne[1]) as i64, (ne[2] * ne[3]) as i64], x.clone())];
            let out = compute(device, &inputs, |g, t| {
                let x = g.reshape(&t[0], &ne.map(|n| n as i64));
                let p = g.permute(&x, axes.map(|a| a as i32));
                g.cont(&p)
            });
            check(&mut failures, &format!("cont(permute(reshape)) {ne:?} by {axes:?}"), device, &out, &want, 0.0);
        }
        // Every other row from row 1, three at a time: a strided view at an offset.
        let (cols, rows) = (11usize, 9usize);
        let x = uniform(&mut r, cols * rows);
        let want: Vec<f64> = (0..4).flat_map(|i| widen(&x[(1 + 2 * i) * cols..][..cols])).collect();
        let inputs = [In::f32(&[cols as i64, rows as i64], x)];
        let out = compute(device, &inputs, |g, t| {
            let v = g.view(&t[0], &[cols as i64, 4], &[2 * cols * 4], cols * 4);
            g.cont(&v)
        });
        check(&mut failures, "cont(view) of every other row", device, &out, &want, 0.0);
    }
    finish(failures);
}

#[test]
fn get_rows_and_set_rows() {
    let mut failures = Vec::new();
    let (n, rows) = (37usize, 9usize);
    for device in devices() {
        let mut r = rng(12);
        let a = uniform(&mut r, n * rows);
        let idx = vec![8, 0, 3, 3];
        let want: Vec<f64> = idx.iter().flat_map(|&i| widen(&a[i as usize * n..][..n])).collect();
        let inputs = [In::f32(&[n as i64, rows as i64], a), In::i32(&[idx.len() as i64], idx)];
        let out = compute(device, &inputs, |g, t| g.get_rows(&t[0], &t[1]));
        check(&mut failures, &format!("get_rows F32 [{n}, {rows}]"), device, &out, &want, 0.0);

        // Storing new K/V rows into the cache (F32 in, F16 or Q8_0 stored), read back through
        // get_rows, which converts to F32.
        let (row, slots) = (128usize, 6usize);
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let (cache_bytes, cache) = weights(&mut r, ty, row, slots);
            let new = uniform(&mut r, row * 2);
            let at = vec![4i64, 1];
            let mut want = cache.clone();
            for (k, &slot) in at.iter().enumerate() {
                let stored: Vec<f64> = match ty {
                    GgmlType::F16 => new[k * row..][..row].iter().map(|&x| f64::from(f16::from_f32(x))).collect(),
                    _ => widen(&new[k * row..][..row]),
                };
                want[slot as usize * row..][..row].copy_from_slice(&stored);
            }
            let all: Vec<i32> = (0..slots as i32).collect();
            let inputs = [
                In::bytes(ty, &[row as i64, slots as i64], cache_bytes),
                In::f32(&[row as i64, 2], new),
                In::i64(&[2], at),
                In::i32(&[slots as i64], all),
            ];
            let out = compute(device, &inputs, |g, t| {
                let stored = g.set_rows(&t[0], &t[1], &t[2]);
                g.get_rows(&stored, &t[3])
            });
            // F16: the rounding is the reference's own (exact). Q8_0: the new rows carry the
            // quantization error of 8-bit blocks.
            let bound = if ty == GgmlType::F16 { 0.0 } else { 1e-4 };
            check(&mut failures, &format!("set_rows F32 into {ty}, then get_rows"), device, &out, &want, bound);
        }
    }
    finish(failures);
}

/// Rows of the cache gathered as stored (the custom CPU operation of the pruned attention); an
/// index outside the cache gives a zero row. Read back through get_rows.
#[test]
fn gather_rows_custom() {
    let mut failures = Vec::new();
    let (row, n_rows) = (96usize, 10usize);
    for device in devices() {
        for ty in [GgmlType::F16, GgmlType::Q8_0] {
            let mut r = rng(13);
            let (bytes, cache) = weights(&mut r, ty, row, n_rows);
            let idx = vec![9, 2, -1, 2, 10, 0];
            let want: Vec<f64> = idx
                .iter()
                .flat_map(|&i| if (0..n_rows as i32).contains(&i) { cache[i as usize * row..][..row].to_vec() } else { vec![0.0; row] })
                .collect();
            let all: Vec<i32> = (0..idx.len() as i32).collect();
            let inputs = [
                In::bytes(ty, &[row as i64, n_rows as i64], bytes),
                In::i32(&[idx.len() as i64], idx),
                In::i32(&[all.len() as i64], all),
            ];
            let out = compute(device, &inputs, |g, t| {
                let picked = g.gather_rows(&t[0], &t[1]);
                g.get_rows(&picked, &t[2])
            });
            check(&mut failures, &format!("gather_rows {ty} (custom)"), device, &out, &want, 0.0);
        }
    }
    finish(failures);
}

/// Host operations (DyCoke's selections) read their inputs and write their output on the host.
#[test]
fn host_op_custom() {
    struct Affine;
    impl HostOp for Affine {
        fn run(&self, inputs: &[OpInput], output: &mut OpOutput) {
            let (a, b) = (inputs[0].f32(), inputs[1].f32());
            for (i, o) in output.f32_mut().iter_mut().enumerate() {
                *o = a[i] + b[i % b.len()];
            }
        }
    }
    let mut failures = Vec::new();
    for device in devices() {
        let mut r = rng(14);
        let (a, b) = (uniform(&mut r, 35), uniform(&mut r, 5));
        let want: Vec<f64> = a.iter().enumerate().map(|(i, &x)| f64::from(x) * 2.0 + f64::from(b[i % 5])).collect();
        let inputs = [In::f32(&[5, 7], a), In::f32(&[5], b)];
        let out = compute(device, &inputs, |g, t| {
            // An input computed on the device first (2a), which has to come back to the host.
            let doubled = g.add(&t[0], &t[0]);
            g.host_op(GgmlType::F32, [5, 7, 1, 1], &[&doubled, &t[1]], Arc::new(Affine))
        });
        check(&mut failures, "host_op", device, &out, &want, 0.0);
    }
    finish(failures);
}

// ---- pooling ------------------------------------------------------------------------------------

#[test]
fn bilinear_interpolate() {
    let mut failures = Vec::new();
    for device in devices() {
        // The video pooling (27 x 27 patches to 14 x 14) and an odd, non-square case.
        for ((w, h, c), (ow, oh)) in [((27usize, 27usize, 5usize), (14usize, 14usize)), ((7, 5, 3), (4, 3))] {
            let mut r = rng(15);
            let x = uniform(&mut r, w * h * c);
            let want = ref_bilinear(&widen(&x), (w, h, c), (ow, oh));
            let inputs = [In::f32(&[w as i64, h as i64, c as i64, 1], x)];
            let out = compute(device, &inputs, |g, t| g.interpolate(&t[0], [ow as i64, oh as i64, c as i64, 1], ScaleMode::Bilinear));
            check(&mut failures, &format!("interpolate bilinear [{w}, {h}] to [{ow}, {oh}] x {c}"), device, &out, &want, F32_EXACT);
        }
    }
    finish(failures);
}
