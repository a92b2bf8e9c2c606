//! Our GGUF reader against ggml's own (`gguf_init_from_file`): the same keys, values, tensor
//! types, shapes, offsets and data offset, on several files. And the parser's robustness: every
//! truncation and random corruption of a file is an error, never a panic.

mod common;

use std::path::Path;

use dycoke_oracle::gguf_dump;
use dycoke::ggml::GgmlType;
use dycoke::gguf::{parse, Array, GgufFile, GgufWriter, Value};

/// ggml's view of a value in our reader's terms (the oracle crate does not know our types).
fn from_ggml(v: &dycoke_oracle::Value) -> Value {
    use dycoke_oracle::Value as G;
    match v {
        G::U8(x) => Value::U8(*x),
        G::I8(x) => Value::I8(*x),
        G::U16(x) => Value::U16(*x),
        G::I16(x) => Value::I16(*x),
        G::U32(x) => Value::U32(*x),
        G::I32(x) => Value::I32(*x),
        G::F32(x) => Value::F32(*x),
        G::Bool(x) => Value::Bool(*x),
        G::String(x) => Value::String(x.clone()),
        G::Array(a) => Value::Array(array_from_ggml(a)),
        G::U64(x) => Value::U64(*x),
        G::I64(x) => Value::I64(*x),
        G::F64(x) => Value::F64(*x),
    }
}

fn array_from_ggml(a: &dycoke_oracle::Array) -> Array {
    use dycoke_oracle::Array as G;
    match a {
        G::U8(x) => Array::U8(x.clone()),
        G::I8(x) => Array::I8(x.clone()),
        G::U16(x) => Array::U16(x.clone()),
        G::I16(x) => Array::I16(x.clone()),
        G::U32(x) => Array::U32(x.clone()),
        G::I32(x) => Array::I32(x.clone()),
        G::F32(x) => Array::F32(x.clone()),
        G::Bool(x) => Array::Bool(x.clone()),
        G::String(x) => Array::String(x.clone()),
        G::Array(x) => Array::Array(x.iter().map(array_from_ggml).collect()),
        G::U64(x) => Array::U64(x.clone()),
        G::I64(x) => Array::I64(x.clone()),
        G::F64(x) => Array::F64(x.clone()),
    }
}

fn cross_check(path: &Path) {
    let ours = GgufFile::open(path).unwrap();
    let theirs = gguf_dump(path).expect("ggml reads the file");
    assert_eq!(ours.version(), theirs.version);
    assert_eq!(ours.alignment(), theirs.alignment);
    assert_eq!(ours.layout().data_offset, theirs.data_offset, "data offset");
    assert_eq!(ours.metadata().len(), theirs.metadata.len());
    for ((k, v), (tk, tv)) in ours.metadata().iter().zip(&theirs.metadata) {
        assert_eq!(k, tk);
        assert_eq!(v, &from_ggml(tv), "value of {k}");
    }
    assert_eq!(ours.tensors().len(), theirs.tensors.len());
    for (t, (name, ty, ne, offset, size)) in ours.tensors().iter().zip(&theirs.tensors) {
        assert_eq!(&t.name, name);
        assert_eq!(t.ty.id(), *ty, "type of {name}");
        assert_eq!(t.ne4(), *ne, "shape of {name}");
        assert_eq!(t.offset, *offset, "offset of {name}");
        assert_eq!(t.size, *size, "size of {name}");
    }
    eprintln!("{}: {} keys, {} tensors agree", path.display(), theirs.metadata.len(), theirs.tensors.len());
}

/// A file with every scalar type, flat arrays of each, an alignment of 64 and odd-sized tensors.
fn all_types_file(path: &Path) {
    let mut w = GgufWriter::new();
    w.set_u32("general.alignment", 64);
    w.set("a.u8", Value::U8(200));
    w.set("a.i8", Value::I8(-100));
    w.set("a.u16", Value::U16(60000));
    w.set("a.i16", Value::I16(-30000));
    w.set("a.u32", Value::U32(4_000_000_000));
    w.set("a.i32", Value::I32(-2_000_000_000));
    w.set("a.f32", Value::F32(0.1));
    w.set("a.bool", Value::Bool(true));
    w.set("a.string", Value::String("unicode ✓ 字".into()));
    w.set("a.u64", Value::U64(1 << 60));
    w.set("a.i64", Value::I64(-(1 << 60)));
    w.set("a.f64", Value::F64(-1e-300));
    w.set("b.u8", Value::Array(Array::U8(vec![1, 2, 3])));
    w.set("b.i16", Value::Array(Array::I16(vec![-1, 2])));
    w.set("b.u32", Value::Array(Array::U32(vec![7; 5])));
    w.set("b.f32", Value::Array(Array::F32(vec![0.5, 1.5])));
    w.set("b.bool", Value::Array(Array::Bool(vec![true, false, true])));
    w.set("b.str", Value::Array(Array::String(vec!["x".into(), "".into(), "yz".into()])));
    w.set("b.i64", Value::Array(Array::I64(vec![i64::MAX])));
    w.set("b.f64", Value::Array(Array::F64(vec![]))); 
    w.add_tensor("t.f32", GgmlType::F32, &[3, 5]).unwrap();
    w.add_tensor("t.q8", GgmlType::Q8_0, &[64, 2]).unwrap();
    w.add_tensor("t.f16", GgmlType::F16, &[7]).unwrap();
    w.add_tensor("t.q4k", GgmlType::Q4K, &[256, 1, 2]).unwrap();
    let mut d = w.create(path).unwrap();
    d.write_tensor("t.f32", &[1u8; 60]).unwrap();
    d.write_tensor("t.q8", &[0u8; 136]).unwrap();
    d.write_tensor("t.f16", &[0u8; 14]).unwrap();
    d.write_tensor("t.q4k", &[0u8; 288]).unwrap();
    d.finish().unwrap();
}

#[test]
fn matches_ggml_on_written_files() {
    let path = common::scratch_dir().join("all-types.gguf");
    all_types_file(&path);
    cross_check(&path);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4K] {
        cross_check(&common::random_model(ty));
    }
}

#[test]
fn version_2_files_read_like_version_3() {
    let v3 = common::scratch_dir().join("v3.gguf");
    all_types_file(&v3);
    let mut bytes = std::fs::read(&v3).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = common::scratch_dir().join("v2.gguf");
    std::fs::write(&v2, &bytes).unwrap();
    cross_check(&v2);
    assert_eq!(GgufFile::open(&v2).unwrap().version(), 2);
}

#[test]
fn matches_ggml_on_the_real_model() {
    let Some(path) = common::real_model() else { return };
    cross_check(&path);
}

#[test]
fn every_truncation_is_an_error() {
    let path = common::scratch_dir().join("trunc-src.gguf");
    all_types_file(&path);
    let bytes = std::fs::read(&path).unwrap();
    let full = parse(&bytes).unwrap();
    // Only the trailing alignment padding may go; any cut into the header or tensor data fails.
    let needed = full.data_offset + full.tensors.iter().map(|t| t.offset + t.size).max().unwrap();
    for len in 0..needed as usize {
        if let Ok(l) = parse(&bytes[..len]) {
            panic!("a file cut to {len} of {needed} needed bytes parsed ({} tensors)", l.tensors.len());
        }
    }
    assert!(parse(&bytes[..needed as usize]).is_ok());
    assert_eq!(full.tensors.len(), 4);
}

#[test]
fn random_corruption_never_panics() {
    use rand::{Rng, SeedableRng};
    let path = common::scratch_dir().join("corrupt-src.gguf");
    all_types_file(&path);
    let bytes = std::fs::read(&path).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let head = parse(&bytes).unwrap().data_offset as usize;
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..head);
            b[i] = match rng.random_range(0..3) {
                0 => rng.random(),
                1 => 0xFF,
                _ => b[i] ^ (1 << rng.random_range(0..8)),
            };
        }
        let _ = parse(&b);
    }
}
