//! Vocabularies for test models: a small byte-level BPE vocabulary trained here, deterministically,
//! on a built-in corpus (English, code, CJK, emoji), or the tokenizer of another GGUF file.

use dycoke::gguf::names::tokenizer as keys;
use dycoke::gguf::{Array, GgufFile, GgufWriter, Value};
use std::collections::HashMap;

const CORPUS: &str = include_str!("corpus.txt");

/// The special tokens every test vocabulary has, with Qwen2's texts.
pub const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML with a default system prompt, like Qwen2's own template.
pub const CHAT_TEMPLATE: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// A tokenizer description ready to be written into a GGUF.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub tokens: Vec<String>,
    /// GGUF token types (1 normal, 3 control, 4 user-defined).
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    pub chat_template: String,
    /// Keys copied verbatim from a source file (overrides the defaults when writing).
    extra: Vec<(String, Value)>,
}

impl Vocab {
    /// The built-in vocabulary: 256 byte tokens, `n_merges` merges learned on the corpus, and the
    /// special tokens, plus `added` (as control tokens, e.g. `<image>`, `<video>`).
    pub fn builtin(n_merges: usize, added: &[&str]) -> Vocab {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| {
                let mut s = String::new();
                dycoke::tokenizer::byte_encode(&[b], &mut s);
                s
            })
            .collect();
        let merges = train_merges(CORPUS, n_merges);
        let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
        for m in &merges {
            // Different merges can spell the same text ("a"+"bc", "ab"+"c"); one token each.
            let t = m.replacen(' ', "", 1);
            if seen.insert(t.clone()) {
                tokens.push(t);
            }
        }
        let mut types = vec![1; tokens.len()];
        for s in SPECIALS.iter().chain(added) {
            tokens.push(s.to_string());
            types.push(3);
        }
        Vocab { tokens, types, merges, chat_template: CHAT_TEMPLATE.to_string(), extra: Vec::new() }
    }

    /// The tokenizer of another GGUF file (every `tokenizer.*` key).
    pub fn from_gguf(file: &GgufFile) -> Result<Vocab, String> {
        let tokens = match file.get(keys::TOKENS) {
            Some(Value::Array(Array::String(t))) => t.clone(),
            _ => return Err(format!("{}: no {} string array", file.path().display(), keys::TOKENS)),
        };
        let extra: Vec<(String, Value)> =
            file.metadata().iter().filter(|(k, _)| k.starts_with("tokenizer.")).cloned().collect();
        Ok(Vocab { types: vec![1; tokens.len()], tokens, merges: Vec::new(), chat_template: String::new(), extra })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().position(|t| t == text).map(|i| i as u32)
    }

    /// Writes the tokenizer keys.
    pub fn write(&self, w: &mut GgufWriter) {
        if !self.extra.is_empty() {
            for (k, v) in &self.extra {
                w.set(k.clone(), v.clone());
            }
            return;
        }
        w.set_str(keys::MODEL, "gpt2");
        w.set_str(keys::PRE, "qwen2");
        w.set_array(keys::TOKENS, Array::String(self.tokens.clone()));
        w.set_array(keys::TOKEN_TYPE, Array::I32(self.types.clone()));
        w.set_array(keys::MERGES, Array::String(self.merges.clone()));
        let id = |t: &str| self.id(t).expect("special token present");
        w.set_u32(keys::EOS_ID, id("<|im_end|>"));
        w.set_u32(keys::PAD_ID, id("<|endoftext|>"));
        w.set_u32(keys::BOS_ID, id("<|endoftext|>"));
        w.set_bool(keys::ADD_BOS, false);
        w.set_str(keys::CHAT_TEMPLATE, &self.chat_template);
    }
}

/// Learns `n` merges: repeatedly the most frequent adjacent pair over the corpus's pre-tokens
/// (ties broken by the pair's text, so the result is the same on every machine).
pub fn train_merges(corpus: &str, n: usize) -> Vec<String> {
    let mut counts: HashMap<Vec<String>, usize> = HashMap::new();
    for r in dycoke::tokenizer::pretokenize(corpus) {
        let mut mapped = String::new();
        dycoke::tokenizer::byte_encode(corpus[r].as_bytes(), &mut mapped);
        let symbols: Vec<String> = mapped.chars().map(String::from).collect();
        *counts.entry(symbols).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts.into_iter().collect();
    words.sort();
    let mut merges = Vec::with_capacity(n);
    for _ in 0..n {
        let mut pairs: HashMap<(&str, &str), usize> = HashMap::new();
        for (w, c) in &words {
            for p in w.windows(2) {
                *pairs.entry((&p[0], &p[1])).or_default() += c;
            }
        }
        let Some((best, _)) = pairs.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0))) else { break };
        let (l, r) = (best.0.to_string(), best.1.to_string());
        let joined = format!("{l}{r}");
        for (w, _) in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == l && w[i + 1] == r {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{l} {r}"));
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_is_deterministic_and_useful() {
        let a = train_merges(CORPUS, 200);
        let b = train_merges(CORPUS, 200);
        assert_eq!(a, b);
        assert_eq!(a.len(), 200);
        // The commonest English pair becomes a token early.
        assert!(a.iter().take(40).any(|m| m == "t h" || m == "Ġ t" || m == "h e"), "{:?}", &a[..40]);
    }

    #[test]
    fn builtin_vocab_has_bytes_merges_and_specials() {
        let v = Vocab::builtin(100, &["<image>"]);
        let n_merged = v.len() - 256 - 4;
        assert!(n_merged > 90 && n_merged <= 100, "{n_merged}");
        assert_eq!(v.id("<|im_end|>"), Some((256 + n_merged + 2) as u32));
        assert_eq!(v.types[v.id("<image>").unwrap() as usize], 3);
    }
}
