//! Preprocessing against the fixture: our bicubic resize equals Pillow's bit for bit on the fixture
//! video's frames; against transformers 5.x (which resizes with torchvision) the pixel data differ
//! by at most 2 levels on a small fraction of pixels. Anyres crops likewise.

use std::path::{Path, PathBuf};

use dycoke::media::{load_image, load_video, FrameSelection, Frame, Sampling};
use dycoke::vision::preprocess::{anyres_crops, default_pinpoints, resize_bicubic};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("refs/manifest.json")).unwrap()).unwrap()
}

/// (max level difference, fraction of values that differ)
fn compare(a: &Frame, b: &Frame) -> (u8, f64) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let diffs: Vec<u8> = a.rgb.iter().zip(&b.rgb).map(|(x, y)| x.abs_diff(*y)).collect();
    (*diffs.iter().max().unwrap(), diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64)
}

fn fixture_frames() -> Vec<Frame> {
    let m = manifest();
    let n = m["video_frame_indices"].as_array().unwrap().len();
    let v = load_video(&dir().join("clip.mp4"), &Sampling::new(FrameSelection::Count(n), 64).unwrap(), 2, &mut |_, _| true).unwrap();
    let want: Vec<usize> = m["video_frame_indices"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    assert_eq!(v.indices, want, "lmms-eval frame indices");
    v.frames
}

#[test]
fn video_frames_resize_exactly_as_pillow() {
    for (k, f) in fixture_frames().iter().enumerate() {
        let ours = resize_bicubic(f, 384, 384);
        let pil = load_image(&dir().join(format!("refs/pil_video_{k}.png"))).unwrap();
        assert_eq!(compare(&ours, &pil).0, 0, "frame {k} differs from Pillow");
    }
}

#[test]
fn video_frames_are_close_to_transformers() {
    let mut worst = (0u8, 0f64);
    for (k, f) in fixture_frames().iter().enumerate() {
        let ours = resize_bicubic(f, 384, 384);
        let hf = load_image(&dir().join(format!("refs/video_{k}.png"))).unwrap();
        let (max, frac) = compare(&ours, &hf);
        worst = (worst.0.max(max), worst.1.max(frac));
    }
    eprintln!("against transformers' torchvision resize: max {} levels, {:.2}% of values differ", worst.0, worst.1 * 100.0);
    assert!(worst.0 <= 2 && worst.1 < 0.05, "{worst:?}");
}

#[test]
fn image_crops_are_close_to_transformers() {
    let m = manifest();
    let img = load_image(&dir().join("image.png")).unwrap();
    let (crops, grid) = anyres_crops(&img, &default_pinpoints(384), 384);
    assert_eq!(crops.len() as u64, m["image_crops"].as_u64().unwrap());
    assert_eq!(grid, (1, 2));
    let mut worst = (0u8, 0f64);
    for (k, c) in crops.iter().enumerate() {
        let hf = load_image(&dir().join(format!("refs/image_{k}.png"))).unwrap();
        let (max, frac) = compare(c, &hf);
        worst = (worst.0.max(max), worst.1.max(frac));
    }
    eprintln!("anyres crops against transformers: max {} levels, {:.2}% of values differ", worst.0, worst.1 * 100.0);
    assert!(worst.0 <= 2 && worst.1 < 0.05, "{worst:?}");
}
