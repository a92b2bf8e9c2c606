//! Reuse in the vision encoder: frames that repeat exactly are encoded once and give the rows that
//! encoding every frame gives, bit for bit; temporal reuse inside the tower at its exact setting
//! (threshold 0) gives the rows of no reuse, and its bad settings are clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::llava::{converted, dir};
use dycoke::compress::{ttm, Compression};
use dycoke::ggml::{Device, GgmlType};
use dycoke::media::{load_image, Frame, Sampling};
use dycoke::encoder::EncoderOptions;
use dycoke::vision::{Stage, TemporalReuse, VisionContext, VisionModel};
use dycoke::weights::Placement;
use dycoke::{Conversation, ConversationOptions, Error, Model, ModelOptions, SessionOptions, Setting};

/// The fixture's eight reference frames, which all differ.
fn picture(k: usize) -> PathBuf {
    dir().join(format!("refs/video_{k}.png"))
}

/// A sequence with repeats next to each other and apart: 10 frames, 6 pictures.
const SEQUENCE: [usize; 10] = [0, 0, 1, 2, 2, 2, 3, 1, 4, 5];

fn context() -> VisionContext {
    let (_, mmproj) = converted(GgmlType::F32);
    let model = VisionModel::load(&mmproj, Placement::cpu()).unwrap();
    VisionContext::new(model, Device::cpu(), 2, 4).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every frame through the tower, in the chunks of four the encoder uses when no frame repeats.
fn every_frame(ctx: &mut VisionContext, frames: &[Frame]) -> Vec<f32> {
    let mut rows = Vec::new();
    for chunk in frames.chunks(4) {
        let pixels = ctx.frame_pixels(chunk);
        rows.extend(ctx.run(Stage::Pixels, Stage::Pooled, &pixels, chunk.len()).unwrap());
    }
    rows
}

#[test]
fn repeated_frames_are_encoded_once_with_identical_rows() {
    let mut ctx = context();
    let frames: Vec<Frame> = SEQUENCE.iter().map(|&k| load_image(&picture(k)).unwrap()).collect();
    let p = ctx.model().params().clone();
    let (n, dim) = (p.tokens_per_frame(), p.out_dim);
    let want = every_frame(&mut ctx, &frames);
    assert_eq!(want.len(), frames.len() * n * dim);

    let mut seen = Vec::new();
    let got = ctx
        .encode_video(&frames, None, &mut |d, t| {
            seen.push((d, t));
            true
        })
        .unwrap();
    assert_eq!((got.work.frames_encoded, got.work.frames_reused, got.work.token_layers_reused), (6, 4, 0));
    assert_eq!(seen, [(4, 6), (6, 6)], "progress counts the frames encoded");
    assert_eq!(got.kept, None);
    assert!(bits(&got.rows) == bits(&want), "rows differ from encoding every frame");

    // With TTM: the rows and kept sets of TTM on every frame's rows (repeats are pruned as TTM
    // says of them: identical to their reference, they keep the fewest positions).
    let host = ttm::apply(&want, frames.len(), n, dim, 0.7).unwrap();
    let got = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap();
    assert_eq!(got.kept.as_ref(), Some(&host.kept));
    assert!(bits(&got.rows) == bits(&host.rows), "TTM rows differ");
    assert_eq!(got.work.frames_reused, 4);

    // No repeat: nothing reused, every frame encoded.
    let distinct: Vec<Frame> = (0..8).map(|k| load_image(&picture(k)).unwrap()).collect();
    let got = ctx.encode_video(&distinct, Some(ttm07()), &mut |_, _| true).unwrap();
    assert_eq!((got.work.frames_encoded, got.work.frames_reused), (8, 0));
    let host = ttm::apply(&every_frame(&mut ctx, &distinct), 8, n, dim, 0.7).unwrap();
    assert!(bits(&got.rows) == bits(&host.rows));

    // One picture repeated: one frame encoded.
    let same = vec![frames[0].clone(); 5];
    let got = ctx.encode_video(&same, None, &mut |_, _| true).unwrap();
    assert_eq!((got.work.frames_encoded, got.work.frames_reused), (1, 4));
    assert!(bits(&got.rows) == bits(&every_frame(&mut ctx, &same)));
}

/// A folder of frame images as a video: `SEQUENCE`'s pictures, named in order.
fn frame_folder(at: &Path) {
    for (i, &k) in SEQUENCE.iter().enumerate() {
        std::fs::copy(picture(k), at.join(format!("frame{i}.png"))).unwrap();
    }
}

#[test]
fn the_media_encoder_counts_frames_encoded_and_reused() {
    let (llm, mmproj) = converted(GgmlType::F32);
    let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap();
    let folder = tempfile::tempdir().unwrap();
    frame_folder(folder.path());
    let session = SessionOptions { n_ctx: 4096, n_threads: 2, ..SessionOptions::default() };
    let sampling = Sampling::frames(SEQUENCE.len()).unwrap();
    // Without compression: the rows are the encoder's, before TTM.
    let options = ConversationOptions { session, sampling, compression: Compression::none(), ..ConversationOptions::default() };
    let mut c = Conversation::new(Arc::clone(&model), &options).unwrap();
    let media = c.add_video(folder.path(), &mut dycoke::progress::ignore).unwrap().clone();
    let counters = c.encoder_counters();
    assert_eq!((counters.vision_encodes, counters.frames_encoded, counters.frames_reused), (1, 6, 4));

    let mut ctx = context();
    let frames: Vec<Frame> = SEQUENCE.iter().map(|&k| load_image(&picture(k)).unwrap()).collect();
    let mut want = every_frame(&mut ctx, &frames);
    want.extend_from_slice(ctx.model().newline());
    assert!(bits(media.rows()) == bits(&want), "the folder's rows differ from encoding every frame");
}

fn fixture_model() -> Arc<Model> {
    let (llm, mmproj) = converted(GgmlType::F32);
    Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap()
}

/// With a threshold of 0 nothing is reused, but every frame goes the reuse path (blocks before the
/// layer batched, the rest frame by frame with the kept keys and values): the rows must be those
/// of no reuse, bit for bit. A threshold that reuses changes them, and the counters say how much.
#[test]
fn temporal_reuse_at_threshold_zero_equals_no_reuse() {
    let mut ctx = context();
    let blocks = ctx.model().params().tower.n_layer;
    let frames: Vec<Frame> = (0..8).map(|k| load_image(&picture(k)).unwrap()).collect();
    let plain = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap();
    let plain_rows = ctx.encode_video(&frames, None, &mut |_, _| true).unwrap();
    for layer in 0..blocks {
        ctx.set_temporal_reuse(Some(TemporalReuse::new(layer, 0.0).unwrap())).unwrap();
        let got = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap();
        assert_eq!(got.kept, plain.kept, "layer {layer}: kept sets");
        assert!(bits(&got.rows) == bits(&plain.rows), "layer {layer}: rows differ from no reuse");
        assert_eq!(got.work.token_layers_reused, 0);
        assert_eq!(got.work.token_layers, 8 * 729 * blocks);
        let got = ctx.encode_video(&frames, None, &mut |_, _| true).unwrap();
        assert!(bits(&got.rows) == bits(&plain_rows.rows), "layer {layer}: rows without TTM differ");
    }

    // The largest threshold reuses much of the last block; the first frame is always computed.
    ctx.set_temporal_reuse(Some(TemporalReuse::new(blocks - 1, 1.0).unwrap())).unwrap();
    let loose = ctx.encode_video(&frames, None, &mut |_, _| true).unwrap();
    let w = loose.work;
    assert!(w.token_layers_reused > 0 && w.token_layers_reused <= 7 * 729, "{w:?}");
    assert!(bits(&loose.rows) != bits(&plain_rows.rows));
    let per_frame = loose.rows.len() / 8;
    assert!(bits(&loose.rows[..per_frame]) == bits(&plain_rows.rows[..per_frame]), "the first frame is computed whole");
    assert!(loose.rows.iter().all(|x| x.is_finite()));

    ctx.set_temporal_reuse(None).unwrap();
    assert!(bits(&ctx.encode_video(&frames, None, &mut |_, _| true).unwrap().rows) == bits(&plain_rows.rows));
}

#[test]
fn bad_temporal_reuse_settings_are_clear_errors() {
    for bad in [-0.5, 1.01, f32::NAN, f32::INFINITY] {
        let e = TemporalReuse::new(1, bad).unwrap_err();
        assert!(matches!(e, Error::Setting { setting: Setting::VisionReuseThreshold, .. }), "{bad}: {e}");
    }
    let mut ctx = context();
    let blocks = ctx.model().params().tower.n_layer;
    let e = ctx.set_temporal_reuse(Some(TemporalReuse::new(blocks, 0.1).unwrap())).unwrap_err();
    assert!(matches!(e, Error::Setting { setting: Setting::VisionReuseLayer, .. }), "{e}");
    assert!(e.to_string().contains(&format!("{blocks} blocks")), "{e}");

    // A conversation checks the layer against the model when it opens.
    let encoder = EncoderOptions { temporal_reuse: Some(TemporalReuse::new(blocks + 5, 0.1).unwrap()), ..EncoderOptions::default() };
    let e = Conversation::new(fixture_model(), &ConversationOptions { encoder, ..ConversationOptions::default() }).err().expect("a bad layer");
    assert!(matches!(e, Error::Setting { setting: Setting::VisionReuseLayer, .. }), "{e}");

    // The command line names its flag.
    let (llm, mmproj) = converted(GgmlType::F32);
    let clip = dir().join("clip.mp4");
    for (value, words) in [("1", "LAYER:THRESHOLD"), ("x:0.1", "block number"), ("1:much", "not a number"), ("1:2", "outside [0, 1]"), ("99:0.1", "blocks")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["run", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "--video", clip.to_str().unwrap()])
            .args(["--frames", "4", "-p", "What happens?", "-n", "1", "--vision-reuse", value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--vision-reuse {value} was accepted");
        assert!(err.contains("--vision-reuse") && err.contains(words), "--vision-reuse {value}: {err}");
    }
}

/// TTM with K = 0.7.
fn ttm07() -> dycoke::compress::TtmSettings {
    dycoke::compress::TtmSettings::new(0.7).unwrap()
}

/// Temporal reuse changes the rows, so the embedding cache keeps a video encoded with it apart from
/// the same video encoded without it: switching the setting misses, the same setting hits.
#[test]
fn the_embedding_cache_keeps_temporal_reuse_apart() {
    let dir = tempfile::tempdir().unwrap();
    let open = |reuse: Option<TemporalReuse>| {
        let encoder = EncoderOptions { temporal_reuse: reuse, ..EncoderOptions::default() };
        let mut c = Conversation::new(fixture_model(), &ConversationOptions { encoder, sampling: dycoke::media::Sampling::frames(4).unwrap(), ..ConversationOptions::default() }).unwrap();
        c.set_embedding_cache(Some(dycoke::encoder::cache::EmbeddingCache::open(dir.path()).unwrap()));
        c.add_video(&dir_clip(), &mut dycoke::progress::ignore).unwrap();
        let n = c.encoder_counters();
        (n.vision_encodes, n.cache_hits)
    };
    let reuse = Some(TemporalReuse::new(1, 0.5).unwrap());
    assert_eq!(open(None), (1, 0));
    assert_eq!(open(reuse), (1, 0), "an entry made without reuse served a request with it");
    assert_eq!(open(reuse), (0, 1));
    assert_eq!(open(None), (0, 1));
}

/// The encoder's own options are checked when a conversation opens.
#[test]
fn bad_encoder_options_are_clear_errors() {
    for (threads, batch, setting) in [(0, 8, Setting::Threads), (2, 0, Setting::VisionBatch), (2, 65, Setting::VisionBatch)] {
        let encoder = EncoderOptions { n_threads: threads, vision_batch: batch, temporal_reuse: None };
        let e = Conversation::new(fixture_model(), &ConversationOptions { encoder, ..ConversationOptions::default() }).err().expect("bad options");
        assert!(matches!(e, Error::Setting { setting: s, .. } if s == setting), "{threads} {batch}: {e}");
    }
}

fn dir_clip() -> std::path::PathBuf {
    dir().join("clip.mp4")
}
