//! The type the vision tower's matrices are multiplied in: the user's choice (`--vision-type`) or
//! the rule `auto` applies, per stored type, from what this CPU multiplies fastest.
//!
//! `auto`, measured with `dycoke bench vision` on SigLIP-so400m (README, "Vision encoder"):
//! - F16 and BF16 matrices become F32 where ggml's CPU backend runs AVX-512: ggml multiplies F16
//!   and BF16 weights by first rounding the activations to that type and widening both operands,
//!   F32 ones with plain FMAs, and F32 measured 1.17x faster than F16 and 1.2x faster than BF16
//!   (BF16 dot products included, on an Intel Xeon). The conversion is exact; it doubles those
//!   matrices' memory and costs a few seconds at load. Elsewhere (not measured) they stay as stored.
//! - F32 matrices stay F32.
//! - Quantized matrices stay quantized (the file's size was chosen); ggml repacks the types it has
//!   an interleaved layout for on this CPU (`weights.rs`).

use std::fmt;

use crate::error::{Error, Result, Setting};
use crate::ggml::GgmlType;
use crate::gguf::names::vision::{BlockPart, Param, Tensor as Name};
use crate::gguf::GgufFile;
use crate::weights::{converted_type, cpu_matrix_buffer, MatrixPlacement, MatrixTypeRule};

/// The types `--vision-type` accepts: those ggml can convert F32 to without an importance matrix
/// and multiply on every backend.
const CHOICES: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Iq4Nl,
    GgmlType::Q6K,
    GgmlType::Q5K,
    GgmlType::Q4K,
    GgmlType::Q3K,
    GgmlType::Q2K,
];

/// The vision matrices' type: chosen per stored type by `auto`, or one type for all (converted
/// once at load; a matrix whose rows do not fit the type's blocks keeps its stored type).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VisionType {
    #[default]
    Auto,
    Fixed(GgmlType),
}

impl VisionType {
    /// A fixed type; an error names the setting when ggml cannot convert to it at load.
    pub fn new(ty: GgmlType) -> Result<VisionType> {
        if CHOICES.contains(&ty) {
            Ok(VisionType::Fixed(ty))
        } else {
            Err(Error::setting(Setting::VisionType, format!("{ty} is not one the matrices can be converted to at load; use {}", choices())))
        }
    }

    /// `auto`, or a type name (`bf16`, `q8_0`, ...; case-insensitive).
    pub fn parse(s: &str) -> Result<VisionType> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(VisionType::Auto);
        }
        match GgmlType::from_name(s) {
            Some(t) => VisionType::new(t),
            None => Err(Error::setting(Setting::VisionType, format!("{s:?} is unknown; use {}", choices()))),
        }
    }

    /// The type a matrix stored as `stored` is multiplied in, on a CPU where F32 matrix products
    /// were measured fastest (`f32_fastest`: AVX-512) or not. Rows that do not fit the type are the
    /// loader's concern.
    pub fn target(self, stored: GgmlType, f32_fastest: bool) -> GgmlType {
        match self {
            VisionType::Fixed(t) => t,
            VisionType::Auto if f32_fastest && matches!(stored, GgmlType::F16 | GgmlType::Bf16) => GgmlType::F32,
            VisionType::Auto => stored,
        }
    }

    /// The loader's rule for this machine.
    pub fn rule(self) -> MatrixTypeRule {
        let f32_fastest = crate::ggml::cpu_has_avx512();
        Box::new(move |stored| self.target(stored, f32_fastest))
    }

    /// Why matrices stored as `stored` are multiplied in `to`, in a few words.
    fn reason(self, stored: GgmlType, to: GgmlType) -> &'static str {
        match self {
            VisionType::Fixed(t) if t == to => "asked for",
            VisionType::Fixed(_) => "asked for, but their rows do not fit its blocks",
            VisionType::Auto if to != stored => "exact, and the fastest measured with AVX-512",
            VisionType::Auto if stored == GgmlType::F32 => "kept",
            VisionType::Auto if matches!(stored, GgmlType::F16 | GgmlType::Bf16) => "kept: no AVX-512",
            VisionType::Auto => "quantized: kept as stored",
        }
    }
}

impl fmt::Display for VisionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VisionType::Auto => f.write_str("auto"),
            VisionType::Fixed(t) => f.write_str(&t.name().to_ascii_lowercase()),
        }
    }
}

/// "auto, f32, f16, ..." as the command line spells them.
fn choices() -> String {
    std::iter::once("auto".to_string()).chain(CHOICES.iter().map(|t| t.name().to_ascii_lowercase())).collect::<Vec<_>>().join(", ")
}

/// Is `name` one of the vision matrices (the tower's six per block, the projector's two)? The
/// patch embedding is a convolution kernel and keeps its type.
fn is_matrix(name: &str) -> bool {
    match Name::from_gguf(name) {
        Some(Name::Block(_, part, Param::Weight)) => !matches!(part, BlockPart::Ln1 | BlockPart::Ln2),
        Some(Name::Projector(_, Param::Weight)) => true,
        _ => false,
    }
}

/// The vision matrices' placement a load of `file` with `asked` would give on this CPU (repacking
/// on), without loading: for `dycoke info`.
pub fn plan(file: &GgufFile, asked: VisionType) -> Vec<MatrixPlacement> {
    let f32_fastest = crate::ggml::cpu_has_avx512();
    file.tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && is_matrix(&t.name))
        .map(|t| {
            let ty = converted_type(t.ty, asked.target(t.ty, f32_fastest), t.shape[0]);
            MatrixPlacement { name: t.name.clone(), file_type: t.ty, ty, buffer: cpu_matrix_buffer(ty, [t.shape[0], t.shape[1]], ty != t.ty) }
        })
        .collect()
}

/// One line on the vision matrices' layout: "F16 file -> F32 (exact, and the fastest measured with
/// AVX-512): 158 F32 in CPU" (the file's type is its most common matrix type).
pub fn describe(asked: VisionType, matrices: &[MatrixPlacement]) -> String {
    let mut file_types: Vec<(GgmlType, usize)> = Vec::new();
    let mut groups: Vec<((GgmlType, &str), usize)> = Vec::new();
    for m in matrices {
        match file_types.iter_mut().find(|(t, _)| *t == m.file_type) {
            Some((_, n)) => *n += 1,
            None => file_types.push((m.file_type, 1)),
        }
        match groups.iter_mut().find(|(k, _)| *k == (m.ty, m.buffer.as_str())) {
            Some((_, n)) => *n += 1,
            None => groups.push(((m.ty, m.buffer.as_str()), 1)),
        }
    }
    let Some(&(main, _)) = file_types.iter().max_by_key(|(_, n)| *n) else {
        return "no matrices".into();
    };
    let to = matrices.iter().find(|m| m.file_type == main).map_or(main, |m| m.ty);
    let parts: Vec<String> = groups
        .iter()
        .map(|((ty, buffer), n)| if *buffer == "mapped" { format!("{n} {ty} mapped") } else { format!("{n} {ty} in {buffer}") })
        .collect();
    format!("{main} file -> {to} ({}): {}", asked.reason(main, to), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_auto_and_types_and_names_the_setting_otherwise() {
        assert_eq!(VisionType::parse("auto").unwrap(), VisionType::Auto);
        assert_eq!(VisionType::parse("BF16").unwrap(), VisionType::Fixed(GgmlType::Bf16));
        assert_eq!(VisionType::parse("q8_0").unwrap(), VisionType::Fixed(GgmlType::Q8_0));
        for bad in ["", "bf17", "i32", "q8_1", "iq2_xxs"] {
            match VisionType::parse(bad) {
                Err(Error::Setting { setting: Setting::VisionType, problem }) => assert!(problem.contains("auto, f32, f16, bf16"), "{problem}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn auto_widens_only_f16_and_bf16_and_only_where_f32_is_fastest() {
        for stored in [GgmlType::F16, GgmlType::Bf16] {
            assert_eq!(VisionType::Auto.target(stored, true), GgmlType::F32);
            assert_eq!(VisionType::Auto.target(stored, false), stored);
        }
        for stored in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K] {
            assert_eq!(VisionType::Auto.target(stored, true), stored);
        }
        assert_eq!(VisionType::Fixed(GgmlType::Q4_0).target(GgmlType::F16, false), GgmlType::Q4_0);
    }

    #[test]
    fn describe_names_the_file_type_the_choice_and_the_buffers() {
        let m = |file_type, ty, buffer: &str| MatrixPlacement { name: String::new(), file_type, ty, buffer: buffer.into() };
        let line = describe(VisionType::Auto, &[m(GgmlType::F16, GgmlType::F32, "CPU"), m(GgmlType::F16, GgmlType::F32, "CPU"), m(GgmlType::Bf16, GgmlType::Bf16, "mapped")]);
        assert_eq!(line, "F16 file -> F32 (exact, and the fastest measured with AVX-512): 2 F32 in CPU, 1 BF16 mapped");
        let line = describe(VisionType::Fixed(GgmlType::Q4_0), &[m(GgmlType::F16, GgmlType::Q4_0, "CPU_REPACK"), m(GgmlType::F16, GgmlType::F16, "mapped")]);
        assert_eq!(line, "F16 file -> Q4_0 (asked for): 1 Q4_0 in CPU_REPACK, 1 F16 mapped");
        assert_eq!(describe(VisionType::Auto, &[]), "no matrices");
    }
}
