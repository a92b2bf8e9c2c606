//! The GGUF writer (version 3, little-endian). The header, metadata and tensor infos are written
//! first; tensor data then streams in declaration order, so a converter never holds a whole model.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::error::GgufError;
use super::reader::{tensor_bytes, DEFAULT_ALIGNMENT, MAX_TENSOR_NAME};
use crate::ggml::GgmlType;
use super::value::{Array, Value};

#[derive(Clone, Debug)]
struct PlannedTensor {
    name: String,
    shape: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    size: u64,
}

/// Collects metadata and tensor declarations, then writes the file's head.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor>,
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Sets a key, replacing an earlier value in place (file order is insertion order).
    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
    }

    pub fn set_str(&mut self, key: &str, v: &str) {
        self.set(key, Value::String(v.to_string()));
    }
    pub fn set_u32(&mut self, key: &str, v: u32) {
        self.set(key, Value::U32(v));
    }
    pub fn set_f32(&mut self, key: &str, v: f32) {
        self.set(key, Value::F32(v));
    }
    pub fn set_bool(&mut self, key: &str, v: bool) {
        self.set(key, Value::Bool(v));
    }
    pub fn set_array(&mut self, key: &str, v: Array) {
        self.set(key, Value::Array(v));
    }

    fn alignment(&self) -> u64 {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Declares a tensor; its data must later be written in declaration order.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, shape: &[u64]) -> Result<(), GgufError> {
        if name.len() > MAX_TENSOR_NAME {
            return Err(GgufError::NameTooLong { tensor: name.to_string(), len: name.len(), max: MAX_TENSOR_NAME });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name.to_string()));
        }
        let size = tensor_bytes(name, shape, ty)?;
        // The offset is assigned in `start`, once the alignment is final.
        self.tensors.push(PlannedTensor { name: name.to_string(), shape: shape.to_vec(), ty, offset: 0, size });
        Ok(())
    }

    /// Writes the head of the file and returns the writer for the tensor data.
    pub fn create(self, path: &Path) -> io::Result<TensorDataWriter> {
        let file = File::create(path)?;
        self.start(BufWriter::with_capacity(1 << 20, file))
    }

    /// Writes the head to any sink (used for in-memory images in tests and fuzz seeds).
    pub fn start<W: Write>(mut self, mut out: W) -> io::Result<TensorDataWriter<W>> {
        let alignment = self.alignment();
        let mut data_size = 0u64;
        for t in &mut self.tensors {
            t.offset = data_size.div_ceil(alignment) * alignment;
            data_size = t.offset + t.size;
        }
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value);
        }
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = (head.len() as u64).div_ceil(alignment) * alignment;
        head.resize(padded as usize, 0);
        out.write_all(&head)?;
        Ok(TensorDataWriter { out, tensors: self.tensors, next: 0, written: 0, position: 0, alignment })
    }
}

/// Receives tensor data in declaration order, inserting the alignment padding between tensors.
pub struct TensorDataWriter<W: Write = BufWriter<File>> {
    out: W,
    tensors: Vec<PlannedTensor>,
    next: usize,
    /// Bytes of the current tensor written so far.
    written: u64,
    /// Bytes of the data section written so far.
    position: u64,
    alignment: u64,
}

fn misuse(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl<W: Write> TensorDataWriter<W> {
    /// The name of the tensor whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.tensors.get(self.next).map(|t| t.name.as_str())
    }

    /// Writes all of one tensor's data.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(misuse(format!("tensor {name:?} written after all declared tensors")));
        };
        if t.name != name || self.written != 0 {
            return Err(misuse(format!("tensor {name:?} written out of order, {:?} was expected", t.name)));
        }
        if data.len() as u64 != t.size {
            return Err(misuse(format!("tensor {name:?}: {} bytes given, {} declared", data.len(), t.size)));
        }
        self.write_chunk(data)
    }

    /// Appends bytes to the current tensor; a tensor is complete once its declared size is reached.
    pub fn write_chunk(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some(t) = self.tensors.get(self.next) else {
                return Err(misuse("more tensor data than declared".into()));
            };
            if self.written == 0 {
                let pad = t.offset - self.position;
                self.out.write_all(&vec![0u8; pad as usize])?;
                self.position += pad;
            }
            let n = (t.size - self.written).min(data.len() as u64) as usize;
            self.out.write_all(&data[..n])?;
            self.written += n as u64;
            self.position += n as u64;
            data = &data[n..];
            if self.written == t.size {
                self.next += 1;
                self.written = 0;
            }
        }
        // Zero-size tensors take no bytes; step over them so that `finish` sees them as written.
        while self.written == 0 && self.tensors.get(self.next).is_some_and(|t| t.size == 0) {
            self.next += 1;
        }
        Ok(())
    }

    /// Checks that every declared tensor was written, pads the data section to the alignment (as
    /// ggml's writer does, so that trailing empty tensors lie inside the file) and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_chunk(&[])?;
        if let Some(t) = self.tensors.get(self.next) {
            return Err(misuse(format!("tensor {:?} was declared but its data was not written", t.name)));
        }
        let end = self.tensors.iter().map(|t| t.offset + t.size).max().unwrap_or(0).div_ceil(self.alignment) * self.alignment;
        if end > self.position {
            self.out.write_all(&vec![0u8; (end - self.position) as usize])?;
            self.position = end;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        Array::U16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I16(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::U32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => v.iter().for_each(|s| put_string(out, s)),
        Array::U64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Array::Array(v) => v.iter().for_each(|inner| put_array(out, inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::reader::parse;

    fn image(w: GgufWriter, data: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut d = w.start(Vec::new()).unwrap();
        for (name, bytes) in data {
            d.write_tensor(name, bytes).unwrap();
        }
        d.finish().unwrap()
    }

    #[test]
    fn every_value_type_round_trips() {
        let mut w = GgufWriter::new();
        let values = vec![
            ("u8", Value::U8(7)),
            ("i8", Value::I8(-7)),
            ("u16", Value::U16(65000)),
            ("i16", Value::I16(-32000)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-2_000_000_000)),
            ("f32", Value::F32(1.5e-6)),
            ("bool", Value::Bool(true)),
            ("string", Value::String("héllo 世界 🙂".into())),
            ("u64", Value::U64(u64::MAX)),
            ("i64", Value::I64(i64::MIN)),
            ("f64", Value::F64(-2.5e300)),
            ("arr.str", Value::Array(Array::String(vec!["a".into(), "".into(), "ç".into()]))),
            ("arr.f32", Value::Array(Array::F32(vec![0.5, -1.0]))),
            ("arr.bool", Value::Array(Array::Bool(vec![true, false]))),
            ("arr.i64", Value::Array(Array::I64(vec![-1, 1 << 40]))),
            ("arr.empty", Value::Array(Array::U8(vec![]))),
            (
                "arr.nested",
                Value::Array(Array::Array(vec![
                    Array::I32(vec![1, 2]),
                    Array::String(vec!["x".into()]),
                    Array::Array(vec![Array::F64(vec![3.0])]),
                ])),
            ),
        ];
        for (k, v) in &values {
            w.set(*k, v.clone());
        }
        let bytes = image(w, &[]);
        let layout = parse(&bytes).unwrap();
        assert_eq!(layout.version, 3);
        assert_eq!(layout.metadata.len(), values.len());
        for ((k, v), (rk, rv)) in values.iter().zip(&layout.metadata) {
            assert_eq!(k, rk);
            assert_eq!(v, rv, "{k}");
        }
    }

    #[test]
    fn tensor_data_is_aligned_and_in_place() {
        let mut w = GgufWriter::new();
        w.set_u32("general.alignment", 64);
        w.add_tensor("a", GgmlType::F32, &[3]).unwrap();
        w.add_tensor("b", GgmlType::F16, &[5, 2]).unwrap();
        w.add_tensor("empty", GgmlType::F32, &[0]).unwrap();
        let a: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = (0..20).collect();
        let bytes = image(w, &[("a", a.clone()), ("b", b.clone())]);
        let layout = parse(&bytes).unwrap();
        assert_eq!(layout.alignment, 64);
        assert_eq!(layout.data_offset % 64, 0);
        let t = &layout.tensors[1];
        assert_eq!((t.name.as_str(), t.offset, t.size), ("b", 64, 20));
        let start = (layout.data_offset + t.offset) as usize;
        assert_eq!(&bytes[start..start + 20], &b[..]);
        let start = (layout.data_offset + layout.tensors[0].offset) as usize;
        assert_eq!(&bytes[start..start + 12], &a[..]);
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let mut w = GgufWriter::new();
        w.add_tensor("a", GgmlType::F32, &[2]).unwrap();
        w.add_tensor("b", GgmlType::F32, &[2]).unwrap();
        assert!(w.clone().add_tensor("a", GgmlType::F32, &[2]).is_err());
        assert!(w.clone().add_tensor("q", GgmlType::Q4K, &[100]).is_err());
        let mut d = w.clone().start(Vec::new()).unwrap();
        assert!(d.write_tensor("b", &[0; 8]).is_err());
        assert!(d.write_tensor("a", &[0; 7]).is_err());
        d.write_tensor("a", &[0; 8]).unwrap();
        assert!(d.finish().is_err());
    }
}
