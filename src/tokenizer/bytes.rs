//! GPT-2's reversible byte-to-character mapping used by byte-level BPE vocabularies: printable
//! bytes stand for themselves, the other 68 are moved to U+0100 onwards, in byte order.

use std::sync::OnceLock;

fn tables() -> &'static ([char; 256], std::collections::HashMap<char, u8>) {
    static TABLES: OnceLock<([char; 256], std::collections::HashMap<char, u8>)> = OnceLock::new();
    TABLES.get_or_init(|| {
        let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
        let mut enc = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            enc[b as usize] = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are valid");
                next += 1;
                c
            };
        }
        let dec = enc.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        (enc, dec)
    })
}

/// Appends the mapped characters of `bytes` to `out`.
pub fn encode_into(bytes: &[u8], out: &mut String) {
    let enc = &tables().0;
    out.extend(bytes.iter().map(|&b| enc[b as usize]));
}

/// The byte a mapped character stands for, if it is one.
pub fn decode_char(c: char) -> Option<u8> {
    tables().1.get(&c).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_a_bijection_with_known_points() {
        let mut s = String::new();
        encode_into(&(0..=255u8).collect::<Vec<_>>(), &mut s);
        let chars: Vec<char> = s.chars().collect();
        assert_eq!(chars.len(), 256);
        assert_eq!(chars[b' ' as usize], 'Ġ'); // U+0120, the familiar space marker
        assert_eq!(chars[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(chars[b'A' as usize], 'A');
        for (b, c) in chars.iter().enumerate() {
            assert_eq!(decode_char(*c), Some(b as u8));
        }
        assert_eq!(decode_char('€'), None);
    }
}
