//! ggml's tensor element types (the ids GGUF files store), with their block geometry.
//!
//! This is our own table (the reader must not trust ggml with an unchecked id: removed ids have a
//! zero block size there). A unit test checks every row against ggml's own traits.

use std::fmt;

/// A ggml tensor type id as stored in GGUF tensor infos.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    Iq2Xxs = 16,
    Iq2Xs = 17,
    Iq3Xxs = 18,
    Iq1S = 19,
    Iq4Nl = 20,
    Iq3S = 21,
    Iq2S = 22,
    Iq4Xs = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    Iq1M = 29,
    Bf16 = 30,
    Tq1_0 = 34,
    Tq2_0 = 35,
    Mxfp4 = 39,
    Nvfp4 = 40,
    Q1_0 = 41,
    Q2_0 = 42,
}

/// (type, name, elements per block, bytes per block)
const TABLE: &[(GgmlType, &str, u64, u64)] = &[
    (GgmlType::F32, "F32", 1, 4),
    (GgmlType::F16, "F16", 1, 2),
    (GgmlType::Q4_0, "Q4_0", 32, 18),
    (GgmlType::Q4_1, "Q4_1", 32, 20),
    (GgmlType::Q5_0, "Q5_0", 32, 22),
    (GgmlType::Q5_1, "Q5_1", 32, 24),
    (GgmlType::Q8_0, "Q8_0", 32, 34),
    (GgmlType::Q8_1, "Q8_1", 32, 36),
    (GgmlType::Q2K, "Q2_K", 256, 84),
    (GgmlType::Q3K, "Q3_K", 256, 110),
    (GgmlType::Q4K, "Q4_K", 256, 144),
    (GgmlType::Q5K, "Q5_K", 256, 176),
    (GgmlType::Q6K, "Q6_K", 256, 210),
    (GgmlType::Q8K, "Q8_K", 256, 292),
    (GgmlType::Iq2Xxs, "IQ2_XXS", 256, 66),
    (GgmlType::Iq2Xs, "IQ2_XS", 256, 74),
    (GgmlType::Iq3Xxs, "IQ3_XXS", 256, 98),
    (GgmlType::Iq1S, "IQ1_S", 256, 50),
    (GgmlType::Iq4Nl, "IQ4_NL", 32, 18),
    (GgmlType::Iq3S, "IQ3_S", 256, 110),
    (GgmlType::Iq2S, "IQ2_S", 256, 82),
    (GgmlType::Iq4Xs, "IQ4_XS", 256, 136),
    (GgmlType::I8, "I8", 1, 1),
    (GgmlType::I16, "I16", 1, 2),
    (GgmlType::I32, "I32", 1, 4),
    (GgmlType::I64, "I64", 1, 8),
    (GgmlType::F64, "F64", 1, 8),
    (GgmlType::Iq1M, "IQ1_M", 256, 56),
    (GgmlType::Bf16, "BF16", 1, 2),
    (GgmlType::Tq1_0, "TQ1_0", 256, 54),
    (GgmlType::Tq2_0, "TQ2_0", 256, 66),
    (GgmlType::Mxfp4, "MXFP4", 32, 17),
    (GgmlType::Nvfp4, "NVFP4", 64, 36),
    (GgmlType::Q1_0, "Q1_0", 128, 18),
    (GgmlType::Q2_0, "Q2_0", 64, 18),
];

impl GgmlType {
    /// Every type this build knows, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|row| row.0)
    }

    /// The type for a raw id, or None for ids that were never assigned or have been removed.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.0 as u32 == id).map(|row| row.0)
    }

    /// The type for a name such as `Q4_K` (case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.1.eq_ignore_ascii_case(name)).map(|row| row.0)
    }

    fn row(self) -> &'static (GgmlType, &'static str, u64, u64) {
        // Every variant has a row: the table and the enum are kept in step by a unit test.
        TABLE.iter().find(|row| row.0 == self).expect("type table row")
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        self.row().1
    }

    /// Elements per quantization block (1 for plain types).
    pub fn block_size(self) -> u64 {
        self.row().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.row().3
    }

    /// Bytes of `n` elements in a row, or None when `n` is not a whole number of blocks or overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::sys;

    /// (elements per block, bytes per block) according to ggml.
    fn type_geometry(t: GgmlType) -> (u64, u64) {
        // SAFETY: the id comes from our table of valid types.
        unsafe { (sys::ggml_blck_size(t.id()) as u64, sys::ggml_type_size(t.id()) as u64) }
    }

    /// ggml's block size for a raw id below GGML_TYPE_COUNT (0 for removed ids).
    fn raw_block_size(id: u32) -> i64 {
        assert!(id < sys::GGML_TYPE_COUNT);
        // SAFETY: ggml's traits table has an entry for every id below GGML_TYPE_COUNT.
        unsafe { sys::ggml_blck_size(id) }
    }

    #[test]
    fn table_matches_ggml_traits() {
        for t in GgmlType::all() {
            let (blck, size) = type_geometry(t);
            assert_eq!(blck, t.block_size(), "{t} block size");
            assert_eq!(size, t.block_bytes(), "{t} block bytes");
        }
        // Ids absent from the table have no geometry in ggml either (removed or never assigned),
        // except past the end, where ggml has no row at all.
        for id in 0..sys::GGML_TYPE_COUNT {
            if GgmlType::from_id(id).is_none() {
                assert_eq!(raw_block_size(id), 0, "id {id} is known to ggml but not to us");
            }
        }
    }

    #[test]
    fn row_bytes_rejects_partial_blocks() {
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(100), None);
        assert_eq!(GgmlType::F32.row_bytes(3), Some(12));
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }

    #[test]
    fn names_round_trip() {
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
    }
}
