//! GGUF: our reader and writer (memmap2 + byteorder), and the one table of tensor names and keys.

mod describe;
mod error;
pub mod names;
mod reader;
mod value;
mod writer;

pub use describe::describe;
pub use error::{Error, GgufError, Result};
pub use reader::{parse, tensor_bytes, GgufFile, GgufLayout, TensorInfo, DEFAULT_ALIGNMENT, MAX_TENSOR_NAME};
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorDataWriter};
