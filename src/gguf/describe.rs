//! A human-readable listing of a GGUF file (`dycoke info`, `gguf-tools inspect`).

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::{GgufFile, Value};

/// Prints the header, every metadata key with its type and value (long arrays abbreviated), and the
/// tensors (all of them with `all_tensors`, else a summary by type).
pub fn describe(file: &GgufFile, out: &mut dyn Write, all_tensors: bool) -> io::Result<()> {
    writeln!(out, "file:       {}", file.path().display())?;
    writeln!(out, "size:       {} bytes", file.file_size())?;
    writeln!(out, "version:    {}", file.version())?;
    writeln!(out, "alignment:  {}", file.alignment())?;
    writeln!(out, "metadata:   {} keys", file.metadata().len())?;
    for (k, v) in file.metadata() {
        let shown = match (k.as_str(), v) {
            // Templates are long and multi-line: show their size.
            (k, Value::String(s)) if k.ends_with("chat_template") => format!("<{} bytes of Jinja>", s.len()),
            _ => v.to_string(),
        };
        writeln!(out, "  {k:<48} {:<14} {shown}", v.type_name())?;
    }
    let total: u64 = file.tensors().iter().map(|t| t.size).sum();
    let params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    writeln!(out, "tensors:    {} ({} parameters, {} bytes of data)", file.tensors().len(), params, total)?;
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ty.to_string()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    for (ty, (n, bytes)) in &by_type {
        writeln!(out, "  {ty:<8} {n:>5} tensors {bytes:>14} bytes")?;
    }
    if all_tensors {
        for t in file.tensors() {
            writeln!(out, "  {:<40} {:<8} {:<24} offset {:>12} size {:>12}", t.name, t.ty.to_string(), format!("{:?}", t.shape), t.offset, t.size)?;
        }
    }
    Ok(())
}
