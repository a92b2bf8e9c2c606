//! The GGUF reader: parses the header, metadata and tensor infos of a memory-mapped file, checking
//! every count, length, offset and size against the file before trusting it. Tensor data is never
//! copied: [`GgufFile::tensor_data`] returns a slice of the mapping.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};

use super::error::{Error, GgufError, Result};
use crate::ggml::GgmlType;
use super::value::{Array, Value, ValueType};
use crate::ggml::MappedFile;

/// The alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// ggml's GGML_MAX_NAME minus the terminating NUL.
pub const MAX_TENSOR_NAME: usize = 63;
/// Caps on counts, far above any real model and far below what would exhaust memory.
pub const MAX_TENSORS: u64 = 1 << 20;
pub const MAX_KEYS: u64 = 1 << 20;
pub const MAX_ARRAY_DEPTH: usize = 8;
pub const MAX_STRING_BYTES: u64 = 1 << 30;

/// One tensor's description: its name, shape in ggml order (`ne`, fastest dimension first), type
/// and where its bytes lie in the data section.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    /// The shape padded with ones to four dimensions, as ggml stores it.
    pub fn ne4(&self) -> [u64; 4] {
        let mut ne = [1u64; 4];
        ne[..self.shape.len()].copy_from_slice(&self.shape);
        ne
    }
}

/// The parsed structure of a GGUF file, independent of where its bytes live.
#[derive(Clone, Debug)]
pub struct GgufLayout {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Byte offset of the data section from the start of the file.
    pub data_offset: u64,
    /// Bytes from the data section's start to the end of the file.
    pub data_len: u64,
}

/// A GGUF file, memory-mapped and validated.
pub struct GgufFile {
    path: PathBuf,
    map: MappedFile,
    layout: GgufLayout,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps and parses a GGUF file. Every failure names the file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let wrap = |kind: GgufError| Error { path: path.clone(), kind };
        let map = MappedFile::open(&path).map_err(|e| wrap(GgufError::Io(e)))?;
        let layout = parse(map.bytes()).map_err(wrap)?;
        let key_index = layout.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = layout.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile { path, map, layout, key_index, tensor_index })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &GgufLayout {
        &self.layout
    }

    pub fn version(&self) -> u32 {
        self.layout.version
    }

    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.layout.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    pub fn file_size(&self) -> u64 {
        self.map.bytes().len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.layout.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.layout.tensors[i])
    }

    /// The tensor's bytes, a slice of the mapping (bounds were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.layout.data_offset + info.offset) as usize;
        &self.map.bytes()[start..start + info.size as usize]
    }

    /// The whole data section.
    pub fn data_section(&self) -> &[u8] {
        &self.map.bytes()[self.layout.data_offset as usize..]
    }

    /// The whole file as mapped (its base is page-aligned, as ggml's CPU buffers want).
    pub fn file_bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// An error about this file, as the caller's error type (model loaders above this layer
    /// return the crate's error, which wraps ours).
    pub fn error<E: From<Error>>(&self, kind: GgufError) -> E {
        E::from(Error { path: self.path.clone(), kind })
    }

    // Typed metadata access. Integers are accepted in any stored width that fits the wanted type,
    // as files written by different converters differ there.

    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.error(GgufError::MissingKey { key: key.to_string() }))
    }

    fn type_error(&self, key: &str, value: &Value, expected: &str) -> Error {
        self.error(GgufError::KeyType {
            key: key.to_string(),
            found: value.type_name(),
            expected: expected.to_string(),
        })
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.type_error(key, v, "string")),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.type_error(key, v, "string"))
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.type_error(key, v, "bool")),
        }
    }

    /// An integer key converted to `T`, with a clear error when it does not fit.
    pub fn get_int<T: TryFrom<i128>>(&self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n = v.as_integer().ok_or_else(|| self.type_error(key, v, "an integer"))?;
        T::try_from(n).map(Some).map_err(|_| {
            self.error(GgufError::KeyValue {
                key: key.to_string(),
                value: n.to_string(),
                problem: format!("which does not fit in {}", std::any::type_name::<T>()),
            })
        })
    }

    pub fn require_int<T: TryFrom<i128>>(&self, key: &str) -> Result<T> {
        self.get_int(key)?.ok_or_else(|| self.error(GgufError::MissingKey { key: key.to_string() }))
    }

    pub fn get_float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_float().map(Some).ok_or_else(|| self.type_error(key, v, "a float")),
        }
    }

    pub fn require_float(&self, key: &str) -> Result<f64> {
        self.get_float(key)?.ok_or_else(|| self.error(GgufError::MissingKey { key: key.to_string() }))
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| self.type_error(key, v, "an array")),
        }
    }

    /// A tensor that must exist with exactly this shape; errors name the tensor and both shapes.
    pub fn require_tensor(&self, name: &str, shape: &[u64]) -> Result<&TensorInfo> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.error(GgufError::MissingTensor { tensor: name.to_string() }))?;
        check_shape(self, info, shape)?;
        Ok(info)
    }
}

/// Shapes compare with trailing ones ignored ([896] equals [896, 1]).
fn check_shape(file: &GgufFile, info: &TensorInfo, expected: &[u64]) -> Result<()> {
    let trim = |s: &[u64]| {
        let mut v = s.to_vec();
        while v.len() > 1 && v.last() == Some(&1) {
            v.pop();
        }
        v
    };
    if trim(&info.shape) != trim(expected) {
        return Err(file.error(GgufError::TensorShape {
            tensor: info.name.clone(),
            found: info.shape.clone(),
            expected: expected.to_vec(),
        }));
    }
    Ok(())
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        Ok(LittleEndian::read_u16(self.take(2, what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(LittleEndian::read_u32(self.take(4, what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(LittleEndian::read_u64(self.take(8, what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("the length of {}", what()))?;
        if len > MAX_STRING_BYTES {
            return Err(GgufError::TooMany {
                what: format!("the string length of {}", what()),
                count: len,
                reason: format!("more than the reader's limit of {MAX_STRING_BYTES} bytes"),
            });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { what: what() })
    }

    /// A count of elements, each at least `min_size` bytes: more than the rest of the file could
    /// hold is rejected before anything is allocated.
    fn count(&mut self, what: &dyn Fn() -> String, min_size: u64, limit: u64) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n > limit {
            return Err(GgufError::TooMany { what: what(), count: n, reason: format!("more than the reader's limit of {limit}") });
        }
        let fits = self.remaining() / min_size.max(1);
        if n > fits {
            return Err(GgufError::TooMany {
                what: what(),
                count: n,
                reason: format!("but the {} bytes left in the file hold at most {fits}", self.remaining()),
            });
        }
        Ok(n)
    }
}

/// Parses and validates a whole GGUF image. Also the entry point of the reader's fuzz target.
pub fn parse(bytes: &[u8]) -> Result<GgufLayout, GgufError> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.take(4, &|| "the magic".into())?;
    if magic != b"GGUF" {
        return Err(GgufError::BadMagic { found: String::from_utf8_lossy(magic).into_owned() });
    }
    let version = c.u32(&|| "the version".into())?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(GgufError::BigEndian);
    }
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes;
    // a key-value pair at least 8 (key length) + 4 (type) + 1.
    let n_tensors = c.count(&|| "the tensor count".into(), 24, MAX_TENSORS)?;
    let n_keys = c.count(&|| "the metadata key count".into(), 13, MAX_KEYS)?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_keys as usize);
    let mut seen_keys = std::collections::HashSet::new();
    for i in 0..n_keys {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let type_id = c.u32(&|| format!("the type of metadata key {key:?}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType { key: key.clone(), id: type_id })?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !seen_keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) => u64::from(*a),
        Some((k, v)) => {
            return Err(GgufError::KeyType { key: k.clone(), found: v.type_name(), expected: "u32".into() });
        }
    };
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(GgufError::BadAlignment(alignment));
    }

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut seen_tensors = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut c, i)?;
        if !seen_tensors.insert(info.name.clone()) {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    // The data section starts at the next multiple of the alignment (it may be empty).
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    check_tensor_placement(&tensors, alignment, data_len)?;

    Ok(GgufLayout { version, alignment, metadata, tensors, data_offset, data_len })
}

fn read_value(c: &mut Cursor, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufError> {
    let what = || format!("the value of metadata key {key:?}");
    Ok(match ty {
        ValueType::U8 => Value::U8(c.u8(&what)?),
        ValueType::I8 => Value::I8(c.u8(&what)? as i8),
        ValueType::U16 => Value::U16(c.u16(&what)?),
        ValueType::I16 => Value::I16(c.u16(&what)? as i16),
        ValueType::U32 => Value::U32(c.u32(&what)?),
        ValueType::I32 => Value::I32(c.u32(&what)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(c.u32(&what)?)),
        ValueType::Bool => Value::Bool(read_bool(c, key)?),
        ValueType::String => Value::String(c.string(&what)?),
        ValueType::U64 => Value::U64(c.u64(&what)?),
        ValueType::I64 => Value::I64(c.u64(&what)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(c.u64(&what)?)),
        ValueType::Array => Value::Array(read_array(c, key, depth)?),
    })
}

fn read_bool(c: &mut Cursor, key: &str) -> Result<bool, GgufError> {
    match c.u8(&|| format!("the value of metadata key {key:?}"))? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(GgufError::KeyValue { key: key.to_string(), value: b.to_string(), problem: "a bool must be 0 or 1".into() }),
    }
}

fn read_array(c: &mut Cursor, key: &str, depth: usize) -> Result<Array, GgufError> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(GgufError::TooDeep { key: key.to_string(), limit: MAX_ARRAY_DEPTH });
    }
    let type_id = c.u32(&|| format!("the element type of array {key:?}"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType { key: key.to_string(), id: type_id })?;
    let n = c.count(&|| format!("the length of array {key:?}"), ty.min_encoded_size(), u64::MAX)? as usize;
    let what = || format!("an element of array {key:?}");

    // Fixed-size element arrays are read in one bounds check; the count was already capped by the
    // bytes remaining, so these allocations are bounded by the file size.
    macro_rules! fixed {
        ($variant:ident, $size:expr, $conv:expr) => {{
            let raw = c.take(n as u64 * $size, &what)?;
            Array::$variant(raw.chunks_exact($size).map($conv).collect())
        }};
    }
    Ok(match ty {
        ValueType::U8 => fixed!(U8, 1, |b: &[u8]| b[0]),
        ValueType::I8 => fixed!(I8, 1, |b: &[u8]| b[0] as i8),
        ValueType::U16 => fixed!(U16, 2, LittleEndian::read_u16),
        ValueType::I16 => fixed!(I16, 2, LittleEndian::read_i16),
        ValueType::U32 => fixed!(U32, 4, LittleEndian::read_u32),
        ValueType::I32 => fixed!(I32, 4, LittleEndian::read_i32),
        ValueType::F32 => fixed!(F32, 4, LittleEndian::read_f32),
        ValueType::U64 => fixed!(U64, 8, LittleEndian::read_u64),
        ValueType::I64 => fixed!(I64, 8, LittleEndian::read_i64),
        ValueType::F64 => fixed!(F64, 8, LittleEndian::read_f64),
        ValueType::Bool => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_bool(c, key)?);
            }
            Array::Bool(v)
        }
        ValueType::String => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.string(&what)?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            Array::Array(v)
        }
    })
}

fn read_tensor_info(c: &mut Cursor, index: u64) -> Result<TensorInfo, GgufError> {
    let name = c.string(&|| format!("the name of tensor #{index}"))?;
    if name.len() > MAX_TENSOR_NAME {
        return Err(GgufError::NameTooLong { tensor: name.clone(), len: name.len(), max: MAX_TENSOR_NAME });
    }
    let n_dims = c.u32(&|| format!("the dimension count of tensor {name:?}"))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims { tensor: name, n_dims, max: MAX_DIMS });
    }
    let mut shape = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        shape.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
    }
    let type_id = c.u32(&|| format!("the type of tensor {name:?}"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), id: type_id })?;
    let offset = c.u64(&|| format!("the data offset of tensor {name:?}"))?;
    let size = tensor_bytes(&name, &shape, ty)?;
    Ok(TensorInfo { name, shape, ty, offset, size })
}

/// The byte size of a tensor, rejecting shapes ggml could not represent.
pub fn tensor_bytes(name: &str, shape: &[u64], ty: GgmlType) -> Result<u64, GgufError> {
    let bad = |reason: String| GgufError::BadShape { tensor: name.to_string(), shape: shape.to_vec(), reason };
    // ggml stores dimensions as int64_t.
    if let Some(&d) = shape.iter().find(|&&d| d > i64::MAX as u64) {
        return Err(bad(format!("dimension {d} does not fit in a signed 64-bit integer")));
    }
    let n_elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad("the element count overflows".into()))?;
    let ne0 = shape.first().copied().unwrap_or(1);
    let row = ty
        .row_bytes(ne0)
        .ok_or_else(|| bad(format!("the first dimension {ne0} is not a multiple of {ty}'s block size {}", ty.block_size())))?;
    let rows = n_elements.checked_div(ne0).unwrap_or(0);
    row.checked_mul(rows).ok_or_else(|| bad("the byte size overflows".into()))
}

fn check_tensor_placement(tensors: &[TensorInfo], alignment: u64, data_len: u64) -> Result<(), GgufError> {
    for t in tensors {
        if t.offset % alignment != 0 {
            return Err(GgufError::Misaligned { tensor: t.name.clone(), offset: t.offset, alignment });
        }
        let end = t.offset.saturating_add(t.size);
        if end > data_len {
            return Err(GgufError::OutOfBounds { tensor: t.name.clone(), start: t.offset, end, available: data_len });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return Err(GgufError::Overlap { first: pair[0].name.clone(), second: pair[1].name.clone() });
        }
    }
    Ok(())
}
