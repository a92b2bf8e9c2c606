//! DyCoke: TTM against a transformers reference with TTM applied by hand (the fixture script),
//! dynamic pruning against the full cache, and proof that pruning runs: counters and the sparse
//! view's size in the decode graph.

mod common;

use std::ops::Range;
use std::process::Command;
use std::sync::Arc;

use common::llava::{converted, dir, f32_array, manifest, rel_err};
use dycoke::compress::dynamic_prune::DynamicPruning;
use dycoke::compress::ttm::{self, Kept};
use dycoke::compress::{Compression, DpSettings, TtmSettings};
use dycoke::ggml::{Device, GgmlType};
use dycoke::llm::kv_cache::KvType;
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::prompt::{self, MediaKind, Piece};
use dycoke::encoder::{EncodedMedia, Layout, VideoLayout};
use dycoke::progress;
use dycoke::tokenizer::ChatMessage;
use dycoke::vision::{VisionContext, VisionModel};
use dycoke::weights::Placement;
use dycoke::{Conversation, ConversationOptions, Error, Model, ModelOptions, SessionOptions, Setting};

// ---- TTM against the reference -------------------------------------------------------------------

fn fixture_session(compression: Compression) -> Conversation {
    let (llm, mmproj) = converted(GgmlType::F32);
    let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap();
    let opts = ConversationOptions { session: SessionOptions { n_threads: 2, ..SessionOptions::default() }, compression, ..ConversationOptions::default() };
    Conversation::new(model, &opts).unwrap()
}

fn only_ttm(k: f64) -> Compression {
    Compression { ttm: Some(TtmSettings::new(k).unwrap()), dp: None }
}

/// A video medium of `frames` frames of `tokens_per_frame` tokens (and a newline) from `rows`.
fn video_media(rows: Vec<f32>, n_embd: usize, frames: usize, tokens_per_frame: usize) -> EncodedMedia {
    let layout = Layout::Video(VideoLayout { frames, tokens_per_frame, frame_indices: Vec::new(), ttm: None });
    EncodedMedia::new("synthetic", rows, n_embd, layout).unwrap()
}

fn video_pieces(s: &Conversation) -> Vec<Piece> {
    let messages = [
        ChatMessage::system(prompt::DEFAULT_MEDIA_SYSTEM_PROMPT),
        ChatMessage::user(prompt::place_media("What happens in this video?", &[MediaKind::Video]).unwrap()),
    ];
    prompt::tokenize_with_media(s.model().tokenizer(), &messages, true).unwrap()
}

/// The reference's kept positions per frame (null: the whole frame).
fn reference_kept() -> Vec<Kept> {
    manifest()["video_ttm_kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| match f.as_array() {
            None => Kept::All,
            Some(p) => Kept::Positions(p.iter().map(|v| v.as_u64().unwrap() as usize).collect()),
        })
        .collect()
}

/// TTM on transformers' own pooled features: the same positions survive, the same rows come out
/// (a selection, so exactly), and the language model's logits over the shortened sequence match
/// transformers' at the tolerance of the uncompressed path.
#[test]
fn ttm_on_the_reference_features_matches_the_reference() {
    let mut s = fixture_session(only_ttm(0.7));
    let (rows, _) = f32_array("video_projected_pooled");
    let frames = manifest()["video_frame_indices"].as_array().unwrap().len();
    let media = video_media(rows, 64, frames, 196);
    let k = manifest()["video_ttm_k"].as_f64().unwrap();
    let compressed = media.with_ttm(TtmSettings::new(k).unwrap()).unwrap();
    assert_eq!(compressed.video().unwrap().ttm.as_deref(), Some(&reference_kept()[..]), "kept positions");
    let (want_rows, _) = f32_array("video_ttm_rows");
    assert_eq!(compressed.rows(), &want_rows[..], "the surviving rows and the newline");
    assert_eq!(compressed.visual_tokens(), 2 * 196 + 6 * 58, "8 frames: 2 whole, 6 of 58");

    let pieces = video_pieces(&s);
    s.evaluate(&pieces, &[&compressed], &mut progress::ignore).unwrap();
    let (want, _) = f32_array("video_ttm_logits");
    let e = rel_err(&s.session().logits()[..want.len()], &want);
    eprintln!("TTM on reference features: logits relative error {e:.2e}");
    assert!(e < 1e-4, "{e:.2e}");
    assert_eq!(s.stats().visual_tokens_before_ttm, 8 * 196);
    assert_eq!(s.stats().visual_tokens_after_ttm, 2 * 196 + 6 * 58);
}

/// From the file: our decoding, preprocessing, tower and pooling, then TTM. The closest cut in the
/// reference is `video_ttm_margin` (4e-4 in cosine) away from a tie, far beyond our features'
/// error, so the same positions must survive.
#[test]
fn ttm_end_to_end_from_the_file_matches_the_reference() {
    let mut s = fixture_session(only_ttm(0.7));
    s.set_sampling(dycoke::media::Sampling::frames(8).unwrap());
    let media = s.add_video(&dir().join("clip.mp4"), &mut progress::ignore).unwrap().clone();
    assert_eq!(media.video().unwrap().ttm.as_deref(), Some(&reference_kept()[..]), "kept positions");
    let pieces = video_pieces(&s);
    s.evaluate(&pieces, &[&media], &mut progress::ignore).unwrap();
    let (want, _) = f32_array("video_ttm_logits");
    let got = &s.session().logits()[..want.len()];
    let e = rel_err(got, &want);
    eprintln!("TTM end to end: logits relative error {e:.2e}");
    assert!(e < 1e-3, "{e:.2e}");
    assert_eq!(common::argmax(got), common::argmax(&want));
}

/// TTM as a node of the vision graph and TTM on the host (for cached or saved embeddings) agree
/// exactly on the same pooled rows: the same kept sets, bit-identical rows. Ten frames in graphs
/// of four: the last chunk is smaller and ends in a partial window.
#[test]
fn ttm_in_the_vision_graph_equals_ttm_on_the_host() {
    let (_, mmproj) = converted(GgmlType::F32);
    let model = VisionModel::load(&mmproj, Placement::cpu()).unwrap();
    let mut ctx = VisionContext::new(model, Device::cpu(), 2, 4).unwrap();
    let sampling = dycoke::media::Sampling::new(dycoke::media::FrameSelection::Count(10), 64).unwrap();
    let frames = dycoke::media::load_video(&dir().join("clip.mp4"), &sampling, 2, &mut |_, _| true).unwrap().frames;
    assert_eq!(frames.len(), 10);
    let p = ctx.model().params().clone();
    let (n, dim) = (p.tokens_per_frame(), p.out_dim);

    let mut seen = Vec::new();
    let plain = ctx.encode_video(&frames, None, &mut |d, t| {
        seen.push((d, t));
        true
    });
    let plain = plain.unwrap();
    assert_eq!(seen, [(4, 10), (8, 10), (10, 10)], "progress counts frames, a chunk at a time");
    assert_eq!(plain.kept, None);
    assert_eq!(plain.rows.len(), 10 * n * dim);
    let host = ttm::apply(&plain.rows, 10, n, dim, 0.7).unwrap();

    let in_graph = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap();
    assert_eq!(in_graph.kept.as_ref(), Some(&host.kept), "kept sets");
    assert_eq!(in_graph.kept.as_ref().unwrap().len(), 10);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&in_graph.rows), bits(&host.rows), "surviving rows");
    assert_eq!(in_graph.rows.len(), ttm::kept_count(10, n, 0.7) * dim);
    // Again, through the kept graphs: the same result.
    assert_eq!(ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap(), in_graph);

    // Progress can stop the work after a chunk.
    let mut calls = 0;
    let stopped = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| {
        calls += 1;
        false
    });
    assert!(matches!(stopped, Err(dycoke::Error::Cancelled)), "{stopped:?}");
    assert_eq!(calls, 1);
    // A bad K cannot reach the encoder: the setting is refused where it is made.
    for bad in [1.0, -0.1, f64::NAN] {
        assert!(TtmSettings::new(bad).is_err(), "k = {bad}");
    }
}

// ---- the CLI: presets and exactness --------------------------------------------------------------

fn dycoke(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke")).args(args).output().expect("run dycoke");
    assert!(out.status.success(), "dycoke {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs the fixture model on the fixture video with `extra` options: (stdout, logits after the
/// prompt, stderr).
fn ask_fixture(tag: &str, extra: &[&str]) -> (String, Vec<f32>, String) {
    let (llm, mmproj) = converted(GgmlType::F32);
    let dump = common::scratch_dir().join(format!("dycoke-{tag}.bin"));
    let clip = dir().join("clip.mp4");
    let mut args = vec!["run", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "--video", clip.to_str().unwrap()];
    args.extend_from_slice(&["--frames", "8", "-p", "What happens in this video?", "-n", "24", "--ignore-eos", "-t", "2"]);
    args.extend_from_slice(&["--dump-logits", dump.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let out = dycoke(&args);
    let logits = std::fs::read(&dump).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    (String::from_utf8(out.stdout).unwrap(), logits, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_stages_off_equal_the_uncompressed_path_and_dp_ratio_zero_equals_no_dp() {
    // Both stages off is the uncompressed path (which matches transformers, see cli.rs).
    let none = ask_fixture("none", &["--compress", "none"]);
    let off = ask_fixture("off", &["--no-ttm", "--no-dp"]);
    assert_eq!(none.0, off.0, "answers");
    assert_eq!(none.1, off.1, "logits");
    let (want, _) = f32_array("video_logits");
    assert!(rel_err(&off.1[..want.len()], &want) < 1e-3);

    // Pruning nothing is no pruning: the same greedy answer. (The fixture model has two layers:
    // layer 0 scores, layer 1 is pruned.)
    let zero = ask_fixture("dp0", &["--no-ttm", "--dp-layer", "1", "--dp-ratio", "0", "--stats"]);
    assert_eq!(zero.0, off.0, "answers with --dp-ratio 0 and --no-dp");
    let stats: serde_json::Value = serde_json::from_str(zero.2.lines().last().unwrap()).expect("--stats prints one JSON object last");
    assert_eq!(stats["decode_steps"], 23, "{stats}");
    assert_eq!(stats["mean_kept_fraction"], 1.0, "{stats}");
    assert_eq!(stats["visual_tokens_before_ttm"], 8 * 196);
    assert_eq!(stats["visual_tokens_after_ttm"], 8 * 196);

    // The default for video is DyCoke: TTM shortens the prompt and pruning runs.
    let default = ask_fixture("default", &["--stats"]);
    let stats: serde_json::Value = serde_json::from_str(default.2.lines().last().unwrap()).unwrap();
    assert_eq!(stats["visual_tokens_after_ttm"], 2 * 196 + 6 * 58, "{stats}");
    assert_eq!(stats["decode_steps"], 23, "{stats}");
    let kept = stats["mean_kept_fraction"].as_f64().unwrap();
    assert!((kept - (740.0 * 0.3f64).floor() / 740.0).abs() < 1e-9, "{stats}");
    let (want, _) = f32_array("video_ttm_logits");
    assert!(rel_err(&default.1[..want.len()], &want) < 1e-3, "the default prompt is TTM's");
}

// ---- dynamic pruning at the language-model level ------------------------------------------------

const N_VISUAL: usize = 600;

/// A prompt of text, `N_VISUAL` rows of "video" (random, of order one like projected features), a
/// newline row and more text; its visual span.
fn video_prompt(n_embd: usize) -> (Vec<u32>, Vec<f32>, Vec<u32>, Range<usize>) {
    let before: Vec<u32> = (0..12).map(|i| 40 + i * 7).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift, then a sum of uniforms: a rough normal of unit spread.
        let mut s = 0.0;
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s += (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        }
        (s * 1.7) as f32
    };
    let rows: Vec<f32> = (0..(N_VISUAL + 1) * n_embd).map(|_| next()).collect();
    let after: Vec<u32> = (0..9).map(|i| 300 + i * 11).collect();
    let span = before.len()..before.len() + N_VISUAL;
    (before, rows, after, span)
}

struct Decoded {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
    ctx: LlmContext,
}

/// Greedy decoding of `steps` tokens after the video prompt, with `pruning` as the decode attention.
fn decode(model: &Model, kv: KvType, pruning: Option<Arc<DynamicPruning>>, steps: usize) -> Decoded {
    let mut ctx = LlmContext::new(model.llm().clone(), &LlmOptions { kv_type: kv, ..LlmOptions::new(1024, 2) }).unwrap();
    let (before, rows, after, _) = video_prompt(model.llm().params().n_embd);
    ctx.eval(&[Segment::Tokens(&before), Segment::Embeddings(&rows), Segment::Tokens(&after)]).unwrap();
    ctx.set_decode_attention(pruning.map(|p| p as Arc<dyn dycoke::llm::DecodeAttention>));
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let t = common::argmax(ctx.logits()) as u32;
        tokens.push(t);
        ctx.eval(&[Segment::Tokens(&[t])]).unwrap();
        logits.push(ctx.logits().to_vec());
    }
    Decoded { tokens, logits, ctx }
}

fn random_model() -> Arc<Model> {
    // Four layers: the default L = 3 scores at layer 2 and prunes layer 3.
    Model::load(&ModelOptions::new(common::random_model(GgmlType::Q8_0))).unwrap()
}

fn pruning(ratio: f64) -> Arc<DynamicPruning> {
    let (_, _, _, span) = video_prompt(1);
    Arc::new(DynamicPruning::new(3, vec![span], ratio, 0.9))
}

#[test]
fn pruning_ratio_zero_equals_the_full_cache() {
    let model = random_model();
    for kv in [KvType::F16, KvType::Q8_0] {
        let full = decode(&model, kv, None, 20);
        let zero = decode(&model, kv, Some(pruning(0.0)), 20);
        assert_eq!(zero.tokens, full.tokens, "{kv:?}: greedy tokens");
        // The sparse view then holds every row, padded as the cache view is: the same arithmetic in
        // the same order, so the same bits.
        assert_eq!(zero.logits, full.logits, "{kv:?}: logits");
    }
}

#[test]
fn pruning_runs_reselects_recalls_and_shrinks_the_view() {
    let model = random_model();
    let p = pruning(0.7);
    let full = decode(&model, KvType::F16, None, 40);
    let pruned = decode(&model, KvType::F16, Some(p.clone()), 40);
    let c = p.counters();
    eprintln!("counters after 40 steps: {c:?}");
    let keep = (N_VISUAL as f64 * 0.3).floor() as usize;
    assert_eq!(p.keep(), keep);
    assert_eq!(c.steps, 40);
    assert!(c.fresh_selections >= 2 && c.fresh_selections <= 40, "attention moved: {c:?}");
    assert!(c.recalls > 0, "entries came back from the pruning cache: {c:?}");
    assert!((c.mean_kept_fraction() - keep as f64 / N_VISUAL as f64).abs() < 1e-12);
    // The last step: every position but the dropped visual ones.
    let positions = pruned.ctx.n_past();
    assert_eq!(c.last_positions, positions);
    assert_eq!(c.last_rows, positions - N_VISUAL + keep);

    // Layers 3.. attend over a gathered copy of fewer rows; layers 0..3 over the whole cache.
    let nodes = pruned.ctx.decode_graph_nodes("dp_k_l");
    assert_eq!(nodes.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["dp_k_l3"], "{nodes:?}");
    let rows_in_view = nodes[0].1[1] as usize;
    assert_eq!(rows_in_view, c.last_rows.div_ceil(256) * 256, "the view holds the kept rows (padded to 256)");
    assert!(rows_in_view < positions - N_VISUAL / 2, "{rows_in_view} rows for {positions} positions");
    assert!(full.ctx.decode_graph_nodes("dp_").is_empty());

    // Pruning changes the computation (the logits of the last layers see less).
    assert!(pruned.logits.iter().zip(&full.logits).any(|(a, b)| a != b));
}

#[test]
fn conversation_prunes_only_videos_and_resets_per_answer() {
    let model = random_model();
    let session = SessionOptions { n_threads: 2, n_ctx: 1024, ..SessionOptions::default() };
    let mut s = Conversation::new(model.clone(), &ConversationOptions { session, compression: Compression { ttm: None, ..Compression::dycoke() }, ..ConversationOptions::default() }).unwrap();
    let n_embd = model.llm().params().n_embd;
    let (before, rows, after, span) = video_prompt(n_embd);
    let video = video_media(rows, n_embd, 3, 200);
    let pieces = [Piece::Tokens(before.clone()), Piece::Media(0), Piece::Tokens(after.clone())];
    let params = dycoke::GenerateParams { max_tokens: 6, ignore_eos: true, ..Default::default() };
    let stats = s.evaluate(&pieces, &[&video], &mut progress::ignore).unwrap();
    let first = s.answer(&params, stats, &mut |_| true).unwrap();
    let c = first.pruning.expect("pruning ran on a prompt with video");
    assert_eq!(c.steps, 5);
    assert_eq!(c.last_rows, c.last_positions - span.len() + (span.len() as f64 * 0.3) as usize);
    // A fresh answer starts a fresh selection (no attention history across requests). (The reset
    // makes the prompt's evaluation identical too: reusing it would evaluate its last position as
    // a single-token step, rounding slightly differently.)
    s.session_mut().reset();
    let stats = s.evaluate(&pieces, &[&video], &mut progress::ignore).unwrap();
    let second = s.answer(&params, stats, &mut |_| true).unwrap();
    assert_eq!(second.tokens, first.tokens);
    let c2 = second.pruning.unwrap();
    assert_eq!((c2.steps, c2.fresh_selections, c2.recalls, c2.last_rows), (c.steps, c.fresh_selections, c.recalls, c.last_rows));
    assert_eq!(s.stats().dp.steps, 10);
    // Text alone: nothing to prune.
    let stats = s.evaluate(&[Piece::Tokens(before)], &[], &mut progress::ignore).unwrap();
    assert!(s.answer(&params, stats, &mut |_| true).unwrap().pruning.is_none());
    // Without dynamic pruning in the settings, a video prompt is not pruned either.
    s.set_compression(Compression { dp: None, ..Compression::dycoke() }).unwrap();
    let stats = s.evaluate(&pieces, &[&video], &mut progress::ignore).unwrap();
    assert!(s.answer(&params, stats, &mut |_| true).unwrap().pruning.is_none());
    // Settings are checked against the model, and the error names the setting, not a flag.
    let bad = Compression { dp: Some(DpSettings::default().with_layer(4)), ..Compression::dycoke() };
    match s.set_compression(bad).unwrap_err() {
        e @ Error::Setting { setting: Setting::DpLayer, .. } => assert!(!e.to_string().contains("--"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// TTM with K = 0.7.
fn ttm07() -> dycoke::compress::TtmSettings {
    dycoke::compress::TtmSettings::new(0.7).unwrap()
}
