//! The Qwen2 path against llama.cpp's libllama (the same ggml, an independent model
//! implementation) on the same GGUF.
//!
//! Tolerance: the last-position logits may differ by at most 1e-3 times their standard deviation
//! (max abs difference), for every weight type. Both engines run the same ggml kernels on the same
//! weights, so the only admissible differences come from the order of floating-point operations;
//! in practice they agree to the bit. Greedy tokens must be identical.
//!
//! Both sides run the prompt in the same chunks (ours plans them, see `dycoke::llm::chunks`, and
//! libllama is fed chunk by chunk): ggml's CPU flash attention takes a different path (queries
//! rounded to F16) for chunks of fewer queries than its tile, in either engine, so the chunking
//! itself changes the last bits.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{argmax, cosine, max_abs_diff, std_dev};
use dycoke_oracle::{RefContext, RefModel};
use dycoke::ggml::GgmlType;
use dycoke::gguf::GgufFile;
use dycoke::llm::qwen2::Qwen2;
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::tokenizer::Tokenizer;
use dycoke::weights::Placement;
use gguf_tools::random::Qwen2Spec;

const THREADS: usize = 2;

fn load(path: &Path) -> (Arc<Qwen2>, Tokenizer) {
    let file = Arc::new(GgufFile::open(path).unwrap());
    let tok = Tokenizer::from_gguf(&file).unwrap();
    (Arc::new(Qwen2::load(file, Placement::cpu()).unwrap()), tok)
}

fn prompt_tokens(tok: &Tokenizer, question: &str) -> Vec<u32> {
    tok.encode(&format!("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"), false, true)
}

/// Compares the prompt's last logits and `n_greedy` greedy steps. Returns (max diff / std, cosine).
fn compare(path: &Path, prompt: &[u32], n_greedy: usize, n_batch: usize) -> (f64, f64) {
    let (model, _) = load(path);
    let reference = RefModel::load(path, false).expect("llama.cpp loads the model");
    let n_ctx = (prompt.len() + n_greedy + 1).max(1024).div_ceil(256) * 256;
    let mut ours = LlmContext::new(model, &LlmOptions { n_batch, ..LlmOptions::new(n_ctx, THREADS) }).unwrap();
    let mut theirs = RefContext::new(&reference, n_ctx as u32, n_batch as u32, THREADS as i32).unwrap();

    let a = ours.eval(&[Segment::Tokens(prompt)]).unwrap().to_vec();
    let ids: Vec<i32> = prompt.iter().map(|&t| t as i32).collect();
    decode_in_chunks(&mut theirs, &ids, &ours.chunk_plan(ids.len()));
    let b = theirs.logits();
    let rel = f64::from(max_abs_diff(&a, &b)) / std_dev(&b);
    let cos = cosine(&a, &b);

    let (mut ta, mut tb) = (argmax(&a), argmax(&b));
    for step in 0..n_greedy {
        assert_eq!(ta, tb, "{}: greedy token {step} differs", path.display());
        ta = argmax(ours.eval(&[Segment::Tokens(&[ta as u32])]).unwrap());
        theirs.decode_tokens(&[tb as i32]).unwrap();
        tb = argmax(&theirs.logits());
    }
    (rel, cos)
}

/// Feeds libllama `ids` in the given chunks, one batch each (each is at most its batch size).
fn decode_in_chunks(theirs: &mut RefContext, ids: &[i32], chunks: &[usize]) {
    let mut start = 0;
    for &len in chunks {
        theirs.decode_tokens(&ids[start..start + len]).unwrap();
        start += len;
    }
    assert_eq!(start, ids.len(), "the plan covers the prompt");
}

#[test]
fn random_models_match_llama_cpp() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4K] {
        let path = common::random_model(ty);
        let (_, tok) = load(&path);
        let prompt = prompt_tokens(&tok, "What happens in this video? Describe it in one sentence.");
        let (rel, cos) = compare(&path, &prompt, 32, 512);
        eprintln!("{ty}: max |diff| / std = {rel:.2e}, cosine {cos:.8}");
        assert!(rel < 1e-3, "{ty}: max |diff| is {rel:.2e} of the logits' std");
    }
}

#[test]
fn tied_output_matches_llama_cpp() {
    let spec = Qwen2Spec { tied: true, ..Qwen2Spec::default() };
    let path = common::random_model_with(GgmlType::F16, &spec, "tied");
    let (model, tok) = load(&path);
    assert!(model.tied_output());
    let prompt = prompt_tokens(&tok, "Is the output matrix tied?");
    let (rel, _) = compare(&path, &prompt, 32, 512);
    assert!(rel < 1e-3, "max |diff| is {rel:.2e} of the logits' std");
}

#[test]
fn long_prompt_in_small_chunks_matches_llama_cpp() {
    let path = common::random_model(GgmlType::Q8_0);
    let (_, tok) = load(&path);
    let text = "The camera pans across a kitchen; a person chops onions, then stirs a pot. ".repeat(40);
    let prompt = prompt_tokens(&tok, &text);
    assert!(prompt.len() > 600, "{}", prompt.len());
    // Chunks of 100 cross the cache's 256-position padding boundaries in the middle of a chunk.
    let (rel, _) = compare(&path, &prompt, 16, 100);
    eprintln!("{} positions in chunks of at most 100: max |diff| / std = {rel:.2e}", prompt.len());
    assert!(rel < 1e-3, "max |diff| is {rel:.2e} of the logits' std");
}

#[test]
fn a_small_remainder_is_planned_alike_in_both_engines() {
    let path = common::random_model(GgmlType::F16);
    let (_, tok) = load(&path);
    let text = "A cyclist rides past a bakery; the camera follows, then cuts to the river. ".repeat(80);
    // 2 x 512 + 7 positions: plain chunking would leave 7 rows for the last chunk.
    let prompt = &tok.encode(&text, false, true)[..2 * 512 + 7];
    let (rel, _) = compare(&path, prompt, 16, 512);
    eprintln!("{} positions at the default batch size: max |diff| / std = {rel:.2e}", prompt.len());
    assert!(rel < 1e-3, "max |diff| is {rel:.2e} of the logits' std");
}

#[test]
fn embedding_rows_match_llama_cpp() {
    let path = common::random_model(GgmlType::F32);
    let (model, tok) = load(&path);
    let n_embd = model.params().n_embd;
    let before = tok.encode("<|im_start|>user\n", false, true);
    let after = tok.encode("\nWhat do you see?<|im_end|>\n<|im_start|>assistant\n", false, true);
    let rows = gguf_tools::random::normal_values(9, "media", 37 * n_embd, 0.0, 1.0);

    let mut ours = LlmContext::new(model, &LlmOptions::new(512, THREADS)).unwrap();
    let a = ours.eval(&[Segment::Tokens(&before), Segment::Embeddings(&rows), Segment::Tokens(&after)]).unwrap().to_vec();

    let reference = RefModel::load(&path, false).unwrap();
    let mut theirs = RefContext::new(&reference, 512, 512, THREADS as i32).unwrap();
    let ids = |t: &[u32]| t.iter().map(|&x| x as i32).collect::<Vec<_>>();
    theirs.decode_tokens(&ids(&before)).unwrap();
    theirs.decode_embeddings(&rows, n_embd).unwrap();
    theirs.decode_tokens(&ids(&after)).unwrap();
    let b = theirs.logits();
    let rel = f64::from(max_abs_diff(&a, &b)) / std_dev(&b);
    eprintln!("spliced rows: max |diff| / std = {rel:.2e}");
    assert!(rel < 1e-3, "max |diff| is {rel:.2e} of the logits' std");
    assert_eq!(argmax(&a), argmax(&b));
}

#[test]
fn embedding_rows_of_tokens_equal_the_tokens() {
    let path = common::random_model(GgmlType::Q4K);
    let (model, tok) = load(&path);
    let prompt = prompt_tokens(&tok, "Same either way?");
    let mut rows = vec![0f32; prompt.len() * model.params().n_embd];
    model.embed_tokens(&prompt, &mut rows);
    let mut a = LlmContext::new(model.clone(), &LlmOptions::new(256, THREADS)).unwrap();
    let mut b = LlmContext::new(model, &LlmOptions::new(256, THREADS)).unwrap();
    let la = a.eval(&[Segment::Tokens(&prompt)]).unwrap().to_vec();
    let lb = b.eval(&[Segment::Embeddings(&rows)]).unwrap().to_vec();
    assert_eq!(la, lb);
}

#[test]
fn real_model_matches_llama_cpp() {
    let Some(path) = common::real_model() else { return };
    let (_, tok) = load(&path);
    for question in [
        "Write a Python function that checks whether a number is prime.",
        "Explain in two sentences what a video codec does.",
        "List three differences between a process and a thread.",
    ] {
        let prompt = prompt_tokens(&tok, question);
        let (rel, cos) = compare(&path, &prompt, 64, 512);
        eprintln!("{question:?}: cosine {cos:.8}, max |diff| / std {rel:.2e}");
        assert!(cos >= 0.999, "cosine {cos}");
    }
}
