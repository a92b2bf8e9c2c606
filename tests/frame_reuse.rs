//! Reuse in the vision encoder: frames that repeat exactly are encoded once and give the rows that
//! encoding every frame gives, bit for bit.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::llava::{converted, dir};
use dycoke::compress::{ttm, Compression};
use dycoke::ggml::{Device, GgmlType};
use dycoke::media::{load_image, Frame, Sampling};
use dycoke::vision::{Stage, VideoWork, VisionContext, VisionModel};
use dycoke::weights::Placement;
use dycoke::{Conversation, ConversationOptions, Model, ModelOptions, SessionOptions};

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
    assert_eq!(got.work, VideoWork { frames_encoded: 6, frames_reused: 4 });
    assert_eq!(seen, [(4, 6), (6, 6)], "progress counts the frames encoded");
    assert_eq!(got.kept, None);
    assert!(bits(&got.rows) == bits(&want), "rows differ from encoding every frame");

    // With TTM: the rows and kept sets of TTM on every frame's rows (repeats are pruned as TTM
    // says of them: identical to their reference, they keep the fewest positions).
    let host = ttm::apply(&want, frames.len(), n, dim, 0.7).unwrap();
    let got = ctx.encode_video(&frames, Some(0.7), &mut |_, _| true).unwrap();
    assert_eq!(got.kept.as_ref(), Some(&host.kept));
    assert!(bits(&got.rows) == bits(&host.rows), "TTM rows differ");
    assert_eq!(got.work.frames_reused, 4);

    // No repeat: nothing reused, every frame encoded.
    let distinct: Vec<Frame> = (0..8).map(|k| load_image(&picture(k)).unwrap()).collect();
    let got = ctx.encode_video(&distinct, Some(0.7), &mut |_, _| true).unwrap();
    assert_eq!(got.work, VideoWork { frames_encoded: 8, frames_reused: 0 });
    let host = ttm::apply(&every_frame(&mut ctx, &distinct), 8, n, dim, 0.7).unwrap();
    assert!(bits(&got.rows) == bits(&host.rows));

    // One picture repeated: one frame encoded.
    let same = vec![frames[0].clone(); 5];
    let got = ctx.encode_video(&same, None, &mut |_, _| true).unwrap();
    assert_eq!(got.work, VideoWork { frames_encoded: 1, frames_reused: 4 });
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
