//! Qwen2's pre-tokenizer: the split regex of its tokenizer.json,
//! `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
//! written as a scanner (Rust's regex crate has no look-ahead). Like llama.cpp, the contractions
//! fold ASCII case only.

use unicode_general_category::{get_general_category, GeneralCategory as G};

#[derive(Clone, Copy, Default)]
struct Class {
    letter: bool,
    number: bool,
    space: bool,
    /// A character exists at this position (false past the end).
    some: bool,
}

fn class(c: Option<char>) -> Class {
    let Some(c) = c else { return Class::default() };
    let cat = get_general_category(c);
    Class {
        letter: matches!(cat, G::UppercaseLetter | G::LowercaseLetter | G::TitlecaseLetter | G::ModifierLetter | G::OtherLetter),
        number: matches!(cat, G::DecimalNumber | G::LetterNumber | G::OtherNumber),
        space: c.is_whitespace(),
        some: true,
    }
}

/// Splits `text` into pre-tokens, returned as byte ranges.
pub fn split(text: &str) -> Vec<std::ops::Range<usize>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let byte = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let is_nl = |c: Option<char>| matches!(c, Some('\r') | Some('\n'));
    let mut out = Vec::new();
    let mut pos = 0;
    let emit = |from: usize, to: usize, out: &mut Vec<std::ops::Range<usize>>| {
        if to > from {
            out.push(byte(from)..byte(to));
        }
    };
    while pos < n {
        let start = pos;
        let c = at(pos);
        let cl = class(c);

        // 's 't 're 've 'm 'll 'd
        if c == Some('\'') {
            let lower = |i: usize| at(i).map(|c| c.to_ascii_lowercase());
            if matches!(lower(pos + 1), Some('s' | 't' | 'm' | 'd')) {
                pos += 2;
                emit(start, pos, &mut out);
                continue;
            }
            if matches!((lower(pos + 1), lower(pos + 2)), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
                pos += 3;
                emit(start, pos, &mut out);
                continue;
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(is_nl(c) || cl.number) && (cl.letter || class(at(pos + 1)).letter) {
            pos += 1;
            while class(at(pos)).letter {
                pos += 1;
            }
            emit(start, pos, &mut out);
            continue;
        }

        // \p{N}
        if cl.number {
            pos += 1;
            emit(start, pos, &mut out);
            continue;
        }

        // ' '?[^\s\p{L}\p{N}]+[\r\n]*
        let other = |k: Class| k.some && !(k.space || k.letter || k.number);
        let first = if c == Some(' ') { class(at(pos + 1)) } else { cl };
        if other(first) {
            if c == Some(' ') {
                pos += 1;
            }
            while other(class(at(pos))) {
                pos += 1;
            }
            while is_nl(at(pos)) {
                pos += 1;
            }
            emit(start, pos, &mut out);
            continue;
        }

        // Whitespace runs: \s*[\r\n]+ | \s+(?!\S) | \s+
        let mut run = 0;
        let mut after_last_newline = None;
        while class(at(pos + run)).space {
            if is_nl(at(pos + run)) {
                after_last_newline = Some(pos + run + 1);
            }
            run += 1;
        }
        if let Some(end) = after_last_newline {
            pos = end;
        } else if run > 1 && pos + run < n {
            // Leave the last space to join the word that follows.
            pos += run - 1;
        } else if run > 0 {
            pos += run;
        } else {
            pos += 1;
        }
        emit(start, pos, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split;

    fn words(s: &str) -> Vec<&str> {
        split(s).into_iter().map(|r| &s[r]).collect()
    }

    #[test]
    fn english_and_contractions() {
        assert_eq!(words("Hello world"), ["Hello", " world"]);
        assert_eq!(words("I'm here, they'LL go"), ["I", "'m", " here", ",", " they", "'LL", " go"]);
    }

    #[test]
    fn digits_split_one_by_one() {
        assert_eq!(words("abc 12345"), ["abc", " ", "1", "2", "3", "4", "5"]);
    }

    #[test]
    fn whitespace_rules() {
        assert_eq!(words("a   b"), ["a", "  ", " b"]);
        assert_eq!(words("a  \n\n  b"), ["a", "  \n\n", " ", " b"]);
        assert_eq!(words("end   "), ["end", "   "]);
        assert_eq!(words("x\r\ny"), ["x", "\r\n", "y"]);
    }

    #[test]
    fn punctuation_and_symbols() {
        assert_eq!(words("fn(x) -> y;\n"), ["fn", "(x", ")", " ->", " y", ";\n"]);
        assert_eq!(words("日本語テキスト"), ["日本語テキスト"]);
        assert_eq!(words("hi 🙂🙂!"), ["hi", " 🙂🙂!"]);
    }

    #[test]
    fn covers_the_whole_text() {
        for s in ["", " ", "\n", "a\u{0301}b", "'", "''s", "\u{10FFFF}x", "  \t\u{3000}z"] {
            let joined: String = words(s).concat();
            assert_eq!(joined, s);
        }
    }
}
