//! The vision path against transformers (tests/fixtures/make_llava_fixture.py), stage by stage:
//! each stage gets the reference output of the previous one as input, and its output must match
//! the reference to a relative error (max |diff| / max |reference|) below 1e-4, with F32 weights.

mod common;

use common::llava::{converted, dir, f32_array, manifest, rel_err};
use dycoke::ggml::Device;
use dycoke::ggml::GgmlType;
use dycoke::media::load_image;
use dycoke::vision::preprocess::normalize;
use dycoke::vision::projector::pack_anyres;
use dycoke::vision::{Stage, VisionContext, VisionModel};
use dycoke::weights::Placement;

const TOL: f64 = 1e-4;

fn context() -> VisionContext {
    let (_, mmproj) = converted(GgmlType::F32);
    let model = VisionModel::load(&mmproj, Placement::cpu()).unwrap();
    VisionContext::new(model, Device::cpu(), 2, 4).unwrap()
}

/// The reference pixel values (transformers' preprocessing) of `prefix_k.png` crops.
fn reference_pixels(prefix: &str, n: usize) -> Vec<f32> {
    (0..n).flat_map(|k| normalize(&load_image(&dir().join(format!("refs/{prefix}_{k}.png"))).unwrap(), [0.5; 3], [0.5; 3])).collect()
}

#[test]
fn video_tower_matches_transformers() {
    let mut ctx = context();
    let (want, shape) = f32_array("video_vision_features");
    let pixels = reference_pixels("video", shape[0]);
    let got = ctx.run(Stage::Pixels, Stage::Features, &pixels, shape[0]).unwrap();
    let e = rel_err(&got, &want);
    eprintln!("SigLIP features of {} frames: relative error {e:.2e}", shape[0]);
    assert!(e < TOL, "{e:.2e}");
}

#[test]
fn video_projector_and_pooling_match_transformers() {
    let mut ctx = context();
    let (feats, shape) = f32_array("video_vision_features");
    let (want, _) = f32_array("video_projected_pooled");
    let got = ctx.run(Stage::Features, Stage::Pooled, &feats, shape[0]).unwrap();
    let d = ctx.model().params().out_dim;
    let (frames, newline) = want.split_at(want.len() - d);
    let e = rel_err(&got, frames);
    eprintln!("projected and pooled ({} tokens): relative error {e:.2e}", got.len() / d);
    assert!(e < TOL, "{e:.2e}");
    assert_eq!(ctx.model().newline(), newline, "the trailing newline is the image_newline parameter");
    assert_eq!(ctx.model().params().tokens_per_frame(), 196);
}

#[test]
fn image_crops_through_tower_and_projector_match_transformers() {
    let mut ctx = context();
    let crops = manifest()["image_crops"].as_u64().unwrap() as usize;
    let (want_feats, _) = f32_array("image_vision_features");
    let got = ctx.run(Stage::Pixels, Stage::Features, &reference_pixels("image", crops), crops).unwrap();
    let e = rel_err(&got, &want_feats);
    eprintln!("image crops' features: relative error {e:.2e}");
    assert!(e < TOL, "{e:.2e}");
    let (want_proj, _) = f32_array("image_projected");
    let got = ctx.run(Stage::Features, Stage::Projected, &want_feats, crops).unwrap();
    let e = rel_err(&got, &want_proj);
    eprintln!("image crops' projection: relative error {e:.2e}");
    assert!(e < TOL, "{e:.2e}");
}

#[test]
fn anyres_packing_matches_transformers() {
    let ctx = context();
    let m = manifest();
    let p = ctx.model().params();
    // The fixture image: one row of two tiles, unpadded, no downscale.
    let (proj, _) = f32_array("image_projected");
    let (want, _) = f32_array("image_packed");
    let size = m["image_sizes"].as_array().unwrap();
    let image = (size[0].as_u64().unwrap() as usize, size[1].as_u64().unwrap() as usize);
    let got = pack_anyres(&proj, p.out_dim, p.tower.grid, (1, 2), image, ctx.model().newline(), p.max_crops);
    assert_eq!(got.len(), want.len(), "token count");
    assert!(rel_err(&got, &want) < TOL);
    // A large image: a 4x6 grid, unpadded and bilinearly downscaled.
    let (input, _) = f32_array("pack_input");
    let (newline, _) = f32_array("pack_newline");
    let (want, _) = f32_array("pack_output");
    let grid = m["pack_grid"].as_array().unwrap();
    let size = m["pack_image_size"].as_array().unwrap();
    let got = pack_anyres(
        &input,
        newline.len(),
        p.tower.grid,
        (grid[0].as_u64().unwrap() as usize, grid[1].as_u64().unwrap() as usize),
        (size[0].as_u64().unwrap() as usize, size[1].as_u64().unwrap() as usize),
        &newline,
        p.max_crops,
    );
    assert_eq!(got.len(), want.len(), "token count of the downscaled map");
    let e = rel_err(&got, &want);
    eprintln!("anyres packing with downscale: relative error {e:.2e}");
    assert!(e < TOL, "{e:.2e}");
}

// ---- the prompt: spliced input embeddings and the language model's logits --------------------

use dycoke::prompt::{self, MediaKind, Piece};
use dycoke::encoder::{EncodedMedia, Layout, VideoLayout};
use dycoke::tokenizer::ChatMessage;
use dycoke::{Conversation, ConversationOptions, Model, ModelOptions, SessionOptions};

fn session() -> Conversation {
    let (llm, mmproj) = converted(GgmlType::F32);
    let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap();
    // The uncompressed path (DyCoke's TTM is checked against its own reference in dycoke.rs).
    let compression = dycoke::compress::Compression::none();
    let session = SessionOptions { n_threads: 2, ..SessionOptions::default() };
    Conversation::new(model, &ConversationOptions { session, compression, ..ConversationOptions::default() }).unwrap()
}

fn reference_media(kind: MediaKind, rows: Vec<f32>) -> EncodedMedia {
    let layout = match kind {
        // The fixture's video: 196 pooled tokens per frame and a newline.
        MediaKind::Video => Layout::Video(VideoLayout { frames: (rows.len() / 64 - 1) / 196, tokens_per_frame: 196, frame_indices: Vec::new(), ttm: None }),
        MediaKind::Image => Layout::Image { crops: 0 },
    };
    EncodedMedia::new("reference", rows, 64, layout).unwrap()
}

fn pieces(s: &Conversation, kind: MediaKind, question: &str) -> Vec<Piece> {
    let messages = [
        ChatMessage::system(prompt::DEFAULT_MEDIA_SYSTEM_PROMPT),
        ChatMessage::user(prompt::place_media(question, &[kind]).unwrap()),
    ];
    prompt::tokenize_with_media(s.model().tokenizer(), &messages, true).unwrap()
}

/// The input embeddings of a prompt: token rows from the embedding matrix, media rows as given.
fn input_embeddings(s: &Conversation, pieces: &[Piece], media: &EncodedMedia) -> Vec<f32> {
    let llm = s.model().llm();
    let n = llm.params().n_embd;
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Tokens(t) => {
                let mut rows = vec![0f32; t.len() * n];
                llm.embed_tokens(t, &mut rows);
                out.extend(rows);
            }
            Piece::Media(_) => out.extend_from_slice(media.rows()),
        }
    }
    out
}

fn check_prompt(kind: MediaKind, question: &str, rows_ref: &str, ids_key: &str, embeds_ref: &str, logits_ref: &str) {
    let mut s = session();
    let (rows, _) = f32_array(rows_ref);
    let media = reference_media(kind, rows);
    let pieces = pieces(&s, kind, question);
    // The token ids agree with transformers' around the media.
    let m = manifest();
    let ids: Vec<u32> = m[ids_key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let media_id = m[if kind == MediaKind::Video { "video_token_id" } else { "image_token_id" }].as_u64().unwrap() as u32;
    let ours: Vec<u32> = pieces
        .iter()
        .flat_map(|p| match p {
            Piece::Tokens(t) => t.clone(),
            Piece::Media(_) => vec![media_id; media.n_rows()],
        })
        .collect();
    assert_eq!(ours, ids, "token ids with the media expanded");
    let (want, _) = f32_array(embeds_ref);
    let e = rel_err(&input_embeddings(&s, &pieces, &media), &want);
    eprintln!("{kind:?}: input embeddings, relative error {e:.2e}");
    assert!(e < TOL, "{e:.2e}");
    s.evaluate(&pieces, &[&media], &mut dycoke::progress::ignore).unwrap();
    let (want, _) = f32_array(logits_ref);
    let got = &s.session().logits()[..want.len()];
    let e = rel_err(got, &want);
    eprintln!("{kind:?}: last-position logits from the reference features, relative error {e:.2e}");
    assert!(e < TOL, "{e:.2e}");
}

#[test]
fn video_prompt_embeddings_and_logits_match_transformers() {
    check_prompt(MediaKind::Video, "What happens in this video?", "video_projected_pooled", "video_input_ids", "video_input_embeds", "video_logits");
}

#[test]
fn image_prompt_embeddings_and_logits_match_transformers() {
    check_prompt(MediaKind::Image, "Describe the image.", "image_packed", "image_input_ids", "image_input_embeds", "image_logits");
}

/// From the files themselves: our decoding and Pillow-exact preprocessing against transformers'
/// torchvision preprocessing. The pixel data differ by at most 2 levels on well under 1% of values
/// (see vision_preprocess.rs); measured, that moves the logits by about 5e-5 of their range. The
/// tolerance here is 1e-3, and the most likely token must agree.
#[test]
fn end_to_end_from_the_files() {
    let mut s = session();
    let frames = manifest()["video_frame_indices"].as_array().unwrap().len();
    s.set_sampling(dycoke::media::Sampling::new(dycoke::media::FrameSelection::Count(frames), 64).unwrap());
    for (kind, question, logits_ref) in [
        (MediaKind::Video, "What happens in this video?", "video_logits"),
        (MediaKind::Image, "Describe the image.", "image_logits"),
    ] {
        let media = match kind {
            MediaKind::Video => s.add_video(&dir().join("clip.mp4"), &mut dycoke::progress::ignore).unwrap().clone(),
            MediaKind::Image => s.add_image(&dir().join("image.png"), &mut dycoke::progress::ignore).unwrap().clone(),
        };
        let pieces = pieces(&s, kind, question);
        s.evaluate(&pieces, &[&media], &mut dycoke::progress::ignore).unwrap();
        let (want, _) = f32_array(logits_ref);
        let got = &s.session().logits()[..want.len()];
        let e = rel_err(got, &want);
        eprintln!("{kind:?} end to end: logits relative error {e:.2e}");
        assert!(e < 1e-3, "{e:.2e}");
        assert_eq!(common::argmax(got), common::argmax(&want));
    }
}
