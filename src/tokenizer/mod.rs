//! The tokenizer of a GGUF vocabulary: byte-level BPE with Qwen2's pre-tokenizer, special and added
//! tokens, detokenization that survives UTF-8 split across tokens, and the chat template.
//!
//! It follows llama.cpp's reading of the same GGUF keys (token types, the texts llama.cpp treats as
//! control tokens, the order special tokens are matched in), so both produce the same ids; a test
//! checks this on thousands of strings.

mod bpe;
mod bytes;
mod pretokenize;
pub mod template;

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::gguf::names::tokenizer as keys;
use crate::gguf::{Array, GgufFile};
pub use template::{ChatMessage, ChatTemplate};

pub type TokenId = u32;

/// Splits text into Qwen2 pre-tokens (byte ranges); BPE runs within each.
pub fn pretokenize(text: &str) -> Vec<std::ops::Range<usize>> {
    pretokenize::split(text)
}

/// Appends the byte-level BPE characters standing for `bytes`.
pub fn byte_encode(bytes: &[u8], out: &mut String) {
    bytes::encode_into(bytes, out)
}

/// Token attributes (llama.cpp's `llama_token_attr` bits, which tests compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenAttr(pub u32);

impl TokenAttr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;

    pub fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// From a GGUF `tokenizer.ggml.token_type` value.
    fn from_gguf_type(t: i128) -> TokenAttr {
        TokenAttr(match t {
            1 => Self::NORMAL,
            2 => Self::UNKNOWN,
            3 => Self::CONTROL,
            4 => Self::USER_DEFINED,
            5 => Self::UNUSED,
            6 => Self::BYTE,
            _ => Self::UNDEFINED,
        })
    }
}

// Texts that llama.cpp treats as control tokens whatever their stored type (end-of-turn, fill-in-
// the-middle and end-of-generation markers), and which of those end generation.
const CONTROL_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>", "<|eom_id|>", "<|fim_prefix|>", "<fim-prefix>",
    "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>", "<|fim_suffix|>",
    "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
    "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>",
    "[EOS]", "<eos>", "<turn|>", "<|tool_response>", "[e~[",
];
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    // Fill-in-the-middle padding, repository and file-separator markers also end generation.
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
    "<reponame>", "<|file_sep|>",
];

/// Largest vocabulary accepted (well above any real one; bounds memory for hostile files).
const MAX_VOCAB: usize = 1 << 22;

pub struct Tokenizer {
    texts: Vec<String>,
    attrs: Vec<TokenAttr>,
    ids: HashMap<String, TokenId>,
    merges: bpe::Merges,
    /// Special and added tokens in matching order (longest text first).
    specials: Vec<TokenId>,
    eog: HashSet<TokenId>,
    bos: Option<TokenId>,
    eos: Option<TokenId>,
    add_bos: bool,
    template: ChatTemplate,
}

fn tok_err(file: &GgufFile, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {msg}", file.path().display()))
}

impl Tokenizer {
    /// Reads the vocabulary of a GGUF file (`tokenizer.ggml.model = "gpt2"`, byte-level BPE).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let model = file.get_str(keys::MODEL)?.unwrap_or("");
        if model != "gpt2" {
            return Err(tok_err(file, format!("tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")")));
        }
        let pre = file.get_str(keys::PRE)?.unwrap_or("default");
        if !matches!(pre, "qwen2" | "default") {
            return Err(tok_err(file, format!("pre-tokenizer {pre:?} is not supported (this engine implements Qwen2's)")));
        }
        let texts = match file.get_array(keys::TOKENS)? {
            Some(Array::String(t)) => t.clone(),
            Some(a) => return Err(tok_err(file, format!("{} must be an array of strings, not of {}", keys::TOKENS, a.element_type().name()))),
            None => return Err(tok_err(file, format!("{} is missing", keys::TOKENS))),
        };
        if texts.is_empty() || texts.len() > MAX_VOCAB {
            return Err(tok_err(file, format!("{} tokens (expected 1 to {MAX_VOCAB})", texts.len())));
        }
        let mut attrs = match file.get_array(keys::TOKEN_TYPE)? {
            None => vec![TokenAttr(TokenAttr::NORMAL); texts.len()],
            Some(a) if a.len() == texts.len() => (0..a.len())
                .map(|i| a.integer_at(i).map(TokenAttr::from_gguf_type))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| tok_err(file, format!("{} must be integers", keys::TOKEN_TYPE)))?,
            Some(a) => return Err(tok_err(file, format!("{} has {} entries for {} tokens", keys::TOKEN_TYPE, a.len(), texts.len()))),
        };
        let merges = match file.get_array(keys::MERGES)? {
            Some(Array::String(m)) => m.clone(),
            Some(a) => return Err(tok_err(file, format!("{} must be an array of strings, not of {}", keys::MERGES, a.element_type().name()))),
            None => return Err(tok_err(file, format!("{} is missing (BPE needs merges)", keys::MERGES))),
        };
        let id_key = |k: &str| -> Result<Option<TokenId>> {
            match file.get_int::<i64>(k)? {
                None | Some(-1) => Ok(None),
                Some(v) if v >= 0 && (v as usize) < texts.len() => Ok(Some(v as TokenId)),
                Some(v) => Err(tok_err(file, format!("{k} = {v} is outside the vocabulary of {}", texts.len()))),
            }
        };
        let bos = id_key(keys::BOS_ID)?;
        let eos = id_key(keys::EOS_ID)?;
        let eot = id_key(keys::EOT_ID)?;
        let add_bos = file.get_bool(keys::ADD_BOS)?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(tok_err(file, format!("{} is set but there is no BOS token", keys::ADD_BOS)));
        }

        let mut ids = HashMap::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            // Duplicate texts: the last id wins, as in llama.cpp's token_to_id map.
            ids.insert(t.clone(), i as TokenId);
        }
        let mut eog = HashSet::new();
        for (text, &id) in &ids {
            if CONTROL_TEXTS.contains(&text.as_str()) {
                attrs[id as usize].0 |= TokenAttr::CONTROL;
            }
            if END_OF_GENERATION_TEXTS.contains(&text.as_str()) {
                eog.insert(id);
            }
        }
        eog.extend(eos);
        eog.extend(eot);

        let mut specials: Vec<TokenId> = (0..texts.len() as TokenId)
            .filter(|&i| attrs[i as usize].has(TokenAttr::CONTROL | TokenAttr::USER_DEFINED | TokenAttr::UNKNOWN))
            .filter(|&i| !texts[i as usize].is_empty())
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(texts[i as usize].len()));

        let template = ChatTemplate::from_gguf(file)?;
        Ok(Tokenizer { merges: bpe::Merges::new(&merges), texts, attrs, ids, specials, eog, bos, eos, add_bos, template })
    }

    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }

    pub fn attr(&self, id: TokenId) -> TokenAttr {
        self.attrs.get(id as usize).copied().unwrap_or_default()
    }

    pub fn text(&self, id: TokenId) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.ids.get(text).copied()
    }

    pub fn bos(&self) -> Option<TokenId> {
        self.bos
    }

    pub fn eos(&self) -> Option<TokenId> {
        self.eos
    }

    /// Whether generating `id` ends the answer (end of turn, end of text, ...).
    pub fn is_end_of_generation(&self, id: TokenId) -> bool {
        self.eog.contains(&id)
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt text of a conversation through the model's chat template (with the BOS and EOS
    /// texts the template may use); with `add_generation_prompt`, ready for the assistant's turn.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let text_of = |id: Option<TokenId>| id.and_then(|t| self.text(t)).unwrap_or("");
        self.template.render(messages, add_generation_prompt, text_of(self.bos), text_of(self.eos))
    }

    /// Token ids of `text`. With `parse_special`, control tokens written in the text (such as
    /// `<|im_start|>`) become their ids; added (user-defined) tokens always do. With `add_bos`,
    /// the BOS token is prepended when the model asks for it (Qwen2 does not).
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        let mut scratch = bpe::Scratch::default();
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Special(id) => out.push(id),
                Fragment::Text(r) => self.encode_text(&text[r], &mut out, &mut scratch),
            }
        }
        out
    }

    /// Splits text around special tokens, longest token first, every occurrence (llama.cpp's order).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0..text.len())];
        if text.is_empty() {
            return Vec::new();
        }
        for &id in &self.specials {
            let attr = self.attrs[id as usize];
            if !parse_special && attr.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN) {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(found) = text[start..r.end].find(needle) {
                    let at = start + found;
                    if at > start {
                        next.push(Fragment::Text(start..at));
                    }
                    next.push(Fragment::Special(id));
                    start = at + needle.len();
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            frags = next;
        }
        frags
    }

    fn encode_text(&self, text: &str, out: &mut Vec<TokenId>, scratch: &mut bpe::Scratch) {
        let mut mapped = String::new();
        for word in pretokenize::split(text) {
            mapped.clear();
            bytes::encode_into(text[word].as_bytes(), &mut mapped);
            for piece in self.merges.apply(&mapped, scratch) {
                match self.ids.get(piece.interned.unwrap_or(&piece.text)) {
                    Some(&id) => out.push(id),
                    None => {
                        // A piece missing from the vocabulary falls back to single-byte tokens
                        // (as llama.cpp: only bytes that are whole characters can match).
                        for &b in piece.text.as_bytes() {
                            if let Some(&id) = std::str::from_utf8(&[b]).ok().and_then(|s| self.ids.get(s)) {
                                out.push(id);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bytes a token stands for. Control tokens give their text only with `special`; unused
    /// and undefined tokens give nothing.
    pub fn token_bytes(&self, id: TokenId, special: bool) -> Vec<u8> {
        let Some(text) = self.texts.get(id as usize) else { return Vec::new() };
        let attr = self.attrs[id as usize];
        if attr.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN) && !special {
            return Vec::new();
        }
        if attr.has(TokenAttr::CONTROL | TokenAttr::UNKNOWN | TokenAttr::USER_DEFINED) {
            return text.as_bytes().to_vec();
        }
        if attr.has(TokenAttr::NORMAL) {
            let mut out = Vec::with_capacity(text.len());
            let mut one = [0u8; 4];
            for c in text.chars() {
                match bytes::decode_char(c) {
                    Some(b) => out.push(b),
                    // Not a mapped byte: keep the character itself.
                    None => out.extend_from_slice(c.encode_utf8(&mut one).as_bytes()),
                }
            }
            return out;
        }
        if attr.has(TokenAttr::BYTE) {
            // Byte tokens are spelled <0xXX>.
            if let Some(b) = text.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                return vec![b];
            }
        }
        Vec::new()
    }

    /// The text of a sequence of tokens (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[TokenId], special: bool) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&t| self.token_bytes(t, special)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

enum Fragment {
    Text(std::ops::Range<usize>),
    Special(TokenId),
}

/// Turns a stream of token bytes into text, holding back a character split across tokens until
/// it is complete.
#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// Adds bytes; returns the text that is complete so far.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes what is left (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::StreamDecoder;

    #[test]
    fn stream_decoder_holds_split_characters() {
        let mut d = StreamDecoder::new();
        let emoji = "🙂".as_bytes();
        assert_eq!(d.push(b"ok "), "ok ");
        assert_eq!(d.push(&emoji[..1]), "");
        assert_eq!(d.push(&emoji[1..3]), "");
        assert_eq!(d.push(&emoji[3..]), "🙂");
        assert_eq!(d.push(&[0xE4, 0xB8]), "");
        assert_eq!(d.push(&[0x96, b'!']), "世!");
        assert_eq!(d.push(&[0xFF, b'a']), "\u{FFFD}a");
        assert_eq!(d.push(&[0xE4]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }
}
