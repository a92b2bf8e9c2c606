//! Sessions: prompts reuse the cached prefix (and only evaluate what is new), generation stops for
//! the documented reasons, and errors leave the session usable.

mod common;

use dycoke::ggml::GgmlType;
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::{Error, GenerateParams, Model, ModelOptions, PromptPart, Session, SessionOptions, StopReason};

fn session(ty: GgmlType, n_ctx: usize) -> Session {
    let model = Model::load(&ModelOptions::new(common::random_model(ty))).unwrap();
    Session::new(model, &SessionOptions { n_ctx, n_threads: 2, ..SessionOptions::default() }).unwrap()
}

fn text_tokens(s: &Session, n: usize) -> Vec<u32> {
    let text = "one two three four five six seven eight nine ten ".repeat(n);
    s.tokenize(&text)
}

#[test]
fn a_longer_prompt_evaluates_only_its_new_part() {
    let mut s = session(GgmlType::Q8_0, 1024);
    let all = text_tokens(&s, 30);
    let (a, b) = all.split_at(200);
    let first = s.set_prompt(&[PromptPart::Tokens(a)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!((first.reused, first.evaluated), (0, 200));
    let second = s.set_prompt(&[PromptPart::Tokens(&all)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!((second.reused, second.evaluated), (200, all.len() - 200));

    // The same as evaluating the two parts one after the other.
    let mut direct = LlmContext::new(s.model().llm().clone(), &LlmOptions::new(1024, 2)).unwrap();
    direct.eval(&[Segment::Tokens(a)]).unwrap();
    assert_eq!(direct.eval(&[Segment::Tokens(b)]).unwrap(), s.logits());
}

#[test]
fn a_diverging_prompt_cuts_the_cache_back() {
    let mut s = session(GgmlType::F16, 1024);
    let base = text_tokens(&s, 10);
    let mut x = base.clone();
    x.extend(s.tokenize(" and then the dog barked"));
    let mut y = base.clone();
    y.extend(s.tokenize(" while the cat slept quietly"));
    s.set_prompt(&[PromptPart::Tokens(&x)], &mut dycoke::progress::ignore).unwrap();
    let stats = s.set_prompt(&[PromptPart::Tokens(&y)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!(stats.reused, base.len());
    assert_eq!(s.n_past(), y.len());

    let mut direct = LlmContext::new(s.model().llm().clone(), &LlmOptions::new(1024, 2)).unwrap();
    direct.eval(&[Segment::Tokens(&base)]).unwrap();
    assert_eq!(direct.eval(&[Segment::Tokens(&y[base.len()..])]).unwrap(), s.logits());
}

#[test]
fn the_same_prompt_twice_reevaluates_one_position() {
    let mut s = session(GgmlType::F32, 512);
    let p = text_tokens(&s, 3);
    s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    let stats = s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!((stats.reused, stats.evaluated), (p.len() - 1, 1));
    // Exactly what evaluating the prefix, then the last token alone, gives.
    let mut direct = LlmContext::new(s.model().llm().clone(), &LlmOptions::new(512, 2)).unwrap();
    direct.eval(&[Segment::Tokens(&p[..p.len() - 1])]).unwrap();
    assert_eq!(direct.eval(&[Segment::Tokens(&p[p.len() - 1..])]).unwrap(), s.logits());
}

#[test]
fn generation_stops_at_max_tokens_and_at_a_full_context() {
    let mut s = session(GgmlType::Q4K, 256);
    let p = text_tokens(&s, 1);
    s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    let params = GenerateParams { max_tokens: 7, ignore_eos: true, ..GenerateParams::default() };
    let g = s.generate(&params, &mut |_| true).unwrap();
    assert_eq!((g.tokens.len(), g.stop), (7, StopReason::MaxTokens));

    let long = text_tokens(&s, 40);
    let near_full = &long[..250];
    s.set_prompt(&[PromptPart::Tokens(near_full)], &mut dycoke::progress::ignore).unwrap();
    let params = GenerateParams { max_tokens: 100, ignore_eos: true, ..GenerateParams::default() };
    let g = s.generate(&params, &mut |_| true).unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(s.n_past(), 256);
    assert_eq!(g.tokens.len(), 256 - 250 + 1);
}

#[test]
fn generation_can_be_cancelled() {
    let mut s = session(GgmlType::F16, 256);
    let p = text_tokens(&s, 1);
    s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    let params = GenerateParams { max_tokens: 50, ignore_eos: true, ..GenerateParams::default() };
    let mut pieces = 0;
    let g = s.generate(&params, &mut |_| {
        pieces += 1;
        pieces < 3
    }).unwrap();
    assert_eq!(g.stop, StopReason::Cancelled);
    assert!(g.tokens.len() <= 3);

    s.cancel_token().cancel();
    let g = s.generate(&params, &mut |_| true).unwrap();
    assert_eq!((g.stop, g.tokens.len()), (StopReason::Cancelled, 0));
    s.cancel_token().reset();
}

#[test]
fn a_cancel_stops_prompt_evaluation_at_the_next_chunk() {
    let model = Model::load(&ModelOptions::new(common::random_model(GgmlType::F16))).unwrap();
    let mut s = Session::new(model, &SessionOptions { n_ctx: 1024, n_batch: 32, n_threads: 2, ..SessionOptions::default() }).unwrap();
    let p = text_tokens(&s, 30);
    assert!(p.len() > 200);
    let token = s.cancel_token();
    let mut chunks = 0;
    let r = s.set_prompt(&[PromptPart::Tokens(&p)], &mut |_, _, _| {
        chunks += 1;
        if chunks == 2 {
            token.cancel();
        }
        true
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(chunks, 2, "stopped after the chunk during which it was cancelled");
    assert_eq!(s.n_past(), 0, "a cancelled prompt leaves nothing half-evaluated");
    s.cancel_token().reset();
    // The progress callback stops it the same way, by returning false.
    let mut chunks = 0;
    let r = s.set_prompt(&[PromptPart::Tokens(&p)], &mut |phase, _, _| {
        assert_eq!(phase, dycoke::Phase::Prefill);
        chunks += 1;
        chunks < 3
    });
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert_eq!(chunks, 3);
    assert_eq!(s.n_past(), 0);
    let stats = s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!(stats.evaluated, p.len());
}

#[test]
fn an_overlong_prompt_is_an_error_and_the_session_survives() {
    let mut s = session(GgmlType::F32, 256);
    let long = text_tokens(&s, 60);
    match s.set_prompt(&[PromptPart::Tokens(&long)], &mut dycoke::progress::ignore) {
        Err(Error::ContextOverflow { needed, available: 256, .. }) => assert_eq!(needed, long.len()),
        other => panic!("expected an overflow error, got {other:?}"),
    }
    let p = text_tokens(&s, 1);
    s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    assert_eq!(s.n_past(), p.len());
    let bad = [u32::MAX];
    assert!(matches!(s.set_prompt(&[PromptPart::Tokens(&bad)], &mut dycoke::progress::ignore), Err(Error::InvalidArgument { .. })));
}

#[test]
fn the_real_model_ends_its_turn() {
    let Some(path) = common::real_model() else { return };
    let model = Model::load(&ModelOptions::new(path)).unwrap();
    let mut s = Session::new(model, &SessionOptions { n_ctx: 512, n_threads: 2, ..SessionOptions::default() }).unwrap();
    let p = s.tokenize("<|im_start|>user\nReply with the single word: yes<|im_end|>\n<|im_start|>assistant\n");
    s.set_prompt(&[PromptPart::Tokens(&p)], &mut dycoke::progress::ignore).unwrap();
    let g = s.generate(&GenerateParams { max_tokens: 20, ..GenerateParams::default() }, &mut |_| true).unwrap();
    assert_eq!(g.stop, StopReason::EndOfGeneration, "answer: {:?}", g.text);
    assert!(g.text.to_lowercase().contains("yes"), "answer: {:?}", g.text);
}
