//! A seeded generator of varied strings for tokenizer tests: English, code, CJK, emoji (with ZWJ
//! sequences and flags), mixed whitespace, digits, special tokens and their near-misses.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ENGLISH: &[&str] = &[
    "Hello world", "I'm sure they'll see it", "DON'T SHOUT", "it's", "We've been here", "a", "The quick brown fox",
    "What happens in this video?", "Mr. O'Neil's dog", "state-of-the-art", "e.g. i.e. etc.", "   leading", "trailing   ",
    "new\nline", "CRLF\r\nline", "tab\tseparated", "ALLCAPS", "camelCaseWord", "snake_case_word", "'quoted'", "\"double\"",
];
const CODE: &[&str] = &[
    "fn main() {\n    println!(\"hi\");\n}", "def f(x):\n\treturn x ** 2", "if (a && b || !c) { return; }",
    "let v: Vec<u32> = vec![1, 2, 3];", "<div class=\"x\">&amp;</div>", "SELECT * FROM t WHERE id = 42;",
    "#include <stdio.h>", "x += 1; // comment", "/* block */", "{\"key\": [1, 2.5e-3, null]}", "a->b.c::d", "$HOME/.config",
    "    indented four", "\t\ttabs", "@decorator", "0x1F 0b1010 1_000_000", "λx.x", "```rust\ncode\n```",
];
const CJK: &[&str] = &[
    "今天天气很好", "视频里有一只猫", "この動画では", "カタカナとひらがな", "漢字", "한국어 텍스트", "中文，标点。", "「引用」",
    "全角　スペース", "ｆｕｌｌｗｉｄｔｈ", "混合English和中文",
];
const OTHER: &[&str] = &[
    "Ça va? Très bien!", "Straße", "Ελληνικά", "Русский текст", "مرحبا بالعالم", "שלום", "हिन्दी", "ภาษาไทย", "Tiếng Việt",
    "e\u{0301}", "n\u{0303}o", "\u{00a0}nbsp", "\u{200b}zero width", "\u{feff}bom", "ﬁ ligature", "Å Ω µ", "\u{1d400}\u{1d401}",
];
const EMOJI: &[&str] = &[
    "🙂", "😀😃😄", "🎬 film", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "❤️", "🏳️‍🌈", "☕", "✔ done", "1️⃣", "🐈‍⬛",
];
const DIGITS: &[&str] = &["0", "42", "3.14159", "1,024", "2026-11-21", "12:30:45", "-7", "1e10", "99999999999999", "٣٤٥", "Ⅻ"];
const SPACES: &[&str] = &[" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u{3000}", "\u{2003}", "\u{a0}", "\u{85}", "\x0b", "\x0c"];
const SPECIAL: &[&str] = &[
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "</s>",
    "<|im_start", "im_end|>", "<|", "|>", "<<|im_end|>>", "<image>", "<video>",
];

fn pick<'a>(rng: &mut ChaCha8Rng, pool: &[&'a str]) -> &'a str {
    pool[rng.random_range(0..pool.len())]
}

fn random_codepoint(rng: &mut ChaCha8Rng) -> char {
    const RANGES: &[(u32, u32)] = &[
        (0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f), (0xe00, 0xe7f),
        (0x3040, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x2000, 0x206f), (0x1f300, 0x1f64f), (0x1f900, 0x1f9ff),
    ];
    let (lo, hi) = RANGES[rng.random_range(0..RANGES.len())];
    char::from_u32(rng.random_range(lo..=hi)).unwrap_or('?')
}

/// `n` strings, the same for a given seed.
pub fn varied(n: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pools: &[&[&str]] = &[ENGLISH, CODE, CJK, OTHER, EMOJI, DIGITS, SPACES, SPECIAL];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let parts = rng.random_range(1..=6);
        let mut s = String::new();
        for _ in 0..parts {
            match rng.random_range(0..10) {
                0 => {
                    for _ in 0..rng.random_range(1..12) {
                        s.push(random_codepoint(&mut rng));
                    }
                }
                1 => {
                    let digits = rng.random_range(1..30);
                    for _ in 0..digits {
                        s.push(char::from(b'0' + rng.random_range(0..10)));
                    }
                }
                _ => {
                    let pool = pools[rng.random_range(0..pools.len())];
                    s.push_str(pick(&mut rng, pool));
                }
            }
            if rng.random_bool(0.5) {
                s.push_str(pick(&mut rng, SPACES));
            }
        }
        out.push(s);
    }
    out
}

/// Hand-picked edge cases.
pub fn edge_cases() -> Vec<String> {
    [
        "", " ", "  ", "\n", "\n\n\n", "a", "'s", "'", "''", "'S'LL'VE", "abc'def", "  hello", "hello  ", "hello  world",
        " \n", "\n ", "x\r\n\r\ny", "1234567890", "a1b2c3", "...", "!!!???", "--", " - ", "\u{0301}", "a\u{0301}",
        "<|im_start|>", "<|im_start|><|im_end|>", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "text<|endoftext|>text", "🙂", "🙂🙂", " 🙂", "日本", " 日本", "\t\t\tdeep", "\u{10ffff}", "\u{e000}private", "\u{fffd}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
