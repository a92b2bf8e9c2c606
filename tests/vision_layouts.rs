//! Every layout the vision matrices can be multiplied in, against F32 on the fixture
//! (tests/fixtures/llava-tiny, whose F32 path matches transformers: tests/vision_parity.rs): the
//! pooled features of each of the 8 reference frames must keep a cosine and a relative error
//! (max |diff| / max |F32|) within the layout's stated bound. And `--vision-type` on the command
//! line: what `info` and `run --timings` say, and bad values as errors that name the flag.

mod common;

use std::path::Path;
use std::process::Command;

use common::cosine;
use common::llava::{converted, dir, rel_err};
use dycoke::ggml::{Device, GgmlType};
use dycoke::media::load_image;
use dycoke::vision::preprocess::normalize;
use dycoke::vision::{Stage, VisionContext, VisionModel};
use dycoke::weights::Placement;
use dycoke::VisionType;

const FRAMES: usize = 8;

/// The pooled features of the fixture's 8 reference frames, one vector per frame.
fn pooled(model: std::sync::Arc<VisionModel>) -> Vec<Vec<f32>> {
    let pixels: Vec<f32> = (0..FRAMES).flat_map(|k| normalize(&load_image(&dir().join(format!("refs/video_{k}.png"))).unwrap(), [0.5; 3], [0.5; 3])).collect();
    let mut ctx = VisionContext::new(model, Device::cpu(), 2, 4).unwrap();
    let rows = ctx.run(Stage::Pixels, Stage::Pooled, &pixels, FRAMES).unwrap();
    rows.chunks(rows.len() / FRAMES).map(<[f32]>::to_vec).collect()
}

fn load(mmproj: &Path, ty: VisionType) -> std::sync::Arc<VisionModel> {
    VisionModel::load_with(mmproj, Placement::cpu(), ty).unwrap()
}

fn fixed(t: GgmlType) -> VisionType {
    VisionType::new(t).unwrap()
}

/// The F32 reference: the F32 file multiplied in F32.
fn reference() -> Vec<Vec<f32>> {
    let (_, mmproj) = converted(GgmlType::F32);
    pooled(load(&mmproj, fixed(GgmlType::F32)))
}

/// (worst cosine, worst relative error) over the frames, printed for the README's table.
fn compare(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, f64) {
    let cos: Vec<f64> = got.iter().zip(want).map(|(a, b)| cosine(a, b)).collect();
    let rel: Vec<f64> = got.iter().zip(want).map(|(a, b)| rel_err(a, b)).collect();
    let (min_cos, max_rel) = (cos.iter().copied().fold(1.0, f64::min), rel.iter().copied().fold(0.0, f64::max));
    eprintln!("{what:<28} per-frame cosine >= {min_cos:.7}, relative error <= {max_rel:.2e}");
    (min_cos, max_rel)
}

/// Each layout: (file type, --vision-type, the type the matrices must be multiplied in, cosine
/// bound, relative-error bound). The bounds follow each type's rounding of the weights (F16 keeps
/// 11 significant bits, BF16 8; Q8_0 and Q4_0 keep 8-bit and 4-bit integers per block of 32) and
/// of the activations (ggml rounds them to F16 for F16 weights, BF16 for BF16, 8-bit blocks for
/// quantized ones): each leaves a factor of 3 to 9 over the fixture's measured worst frame (printed
/// by this test) in 1 - cosine and in relative error. BF16 must keep a cosine of 0.999 at least on
/// every frame; Q4_0 on this 32-wide random tower is far lossier than on a trained one.
const LAYOUTS: &[(GgmlType, Option<GgmlType>, GgmlType, f64, f64)] = &[
    (GgmlType::F32, Some(GgmlType::F16), GgmlType::F16, 0.999999, 3.5e-3),
    (GgmlType::F16, Some(GgmlType::F16), GgmlType::F16, 0.999999, 3.5e-3),
    (GgmlType::F16, Some(GgmlType::F32), GgmlType::F32, 0.999999, 3.5e-3),
    (GgmlType::F32, Some(GgmlType::Bf16), GgmlType::Bf16, 0.9999, 2e-2),
    (GgmlType::F16, Some(GgmlType::Bf16), GgmlType::Bf16, 0.9999, 2e-2),
    (GgmlType::Bf16, Some(GgmlType::Bf16), GgmlType::Bf16, 0.9999, 2e-2),
    (GgmlType::Bf16, Some(GgmlType::F32), GgmlType::F32, 0.9999, 2e-2),
    (GgmlType::F32, Some(GgmlType::Q8_0), GgmlType::Q8_0, 0.9995, 6e-2),
    (GgmlType::Q8_0, Some(GgmlType::Q8_0), GgmlType::Q8_0, 0.9995, 6e-2),
    (GgmlType::Q8_0, Some(GgmlType::Bf16), GgmlType::Bf16, 0.9995, 6e-2),
    (GgmlType::F32, Some(GgmlType::Q4_0), GgmlType::Q4_0, 0.93, 0.7),
    (GgmlType::Q4_0, Some(GgmlType::Q4_0), GgmlType::Q4_0, 0.93, 0.7),
];

#[test]
fn every_layout_stays_within_its_bound_of_f32() {
    let want = reference();
    for &(file_type, asked, computed, min_cos, max_rel) in LAYOUTS {
        let (_, mmproj) = converted(file_type);
        let model = load(&mmproj, asked.map_or(VisionType::Auto, fixed));
        // The fixture's matrices all have rows of 32 or 64 values: every one takes the type.
        let types: Vec<GgmlType> = model.weights().matrices.iter().map(|m| m.ty).collect();
        assert!(types.iter().all(|&t| t == computed), "{file_type} file as {asked:?}: {types:?}; {}", model.layout());
        let what = format!("{file_type} file as {computed}");
        let (cos, rel) = compare(&what, &pooled(model), &want);
        assert!(cos >= min_cos, "{what}: cosine {cos} below {min_cos}");
        assert!(rel <= max_rel, "{what}: relative error {rel} above {max_rel}");
    }
}

#[test]
fn auto_keeps_f32_files_exact_and_widens_f16_files_to_f32_with_avx512() {
    let want = reference();
    let (_, f32_file) = converted(GgmlType::F32);
    let model = load(&f32_file, VisionType::Auto);
    assert!(model.weights().matrices.iter().all(|m| m.ty == GgmlType::F32 && m.buffer == "mapped"), "{}", model.layout());
    assert_eq!(pooled(model), want, "auto on an F32 file is the F32 path, bit for bit");

    let (_, f16_file) = converted(GgmlType::F16);
    let model = load(&f16_file, VisionType::Auto);
    let expected = if dycoke::ggml::cpu_has_avx512() { GgmlType::F32 } else { GgmlType::F16 };
    assert!(model.weights().matrices.iter().all(|m| m.ty == expected), "{}", model.layout());
    assert!(model.layout().starts_with(&format!("F16 file -> {expected} (")), "{}", model.layout());
    let f16_auto = pooled(model);
    compare("F16 file, auto", &f16_auto, &want);
    // Widening is exact: the same as asking for F32.
    assert_eq!(f16_auto, pooled(load(&f16_file, fixed(expected))));

    // Quantized files stay as they are.
    let (_, q8_file) = converted(GgmlType::Q8_0);
    let model = load(&q8_file, VisionType::Auto);
    assert!(model.weights().matrices.iter().all(|m| m.ty == GgmlType::Q8_0), "{}", model.layout());
}

#[test]
fn matrices_converted_at_load_go_to_the_repacked_layout_where_ggml_has_one() {
    // ggml repacks Q4_0 on every x86 CPU with AVX2 (and ARM with dot products).
    let cpu = dycoke::ggml::cpu_features_line();
    if !cpu.split(' ').any(|f| f == "AVX2" || f == "NEON") {
        eprintln!("skipped: no repacked Q4_0 layout on this CPU ({cpu})");
        return;
    }
    let (_, mmproj) = converted(GgmlType::F32);
    let model = load(&mmproj, fixed(GgmlType::Q4_0));
    assert!(model.weights().matrices.iter().all(|m| m.ty == GgmlType::Q4_0 && m.buffer == "CPU_REPACK"), "{}", model.layout());
    // And a Q4_0 file's matrices too, straight from the mapping.
    let (_, q4_file) = converted(GgmlType::Q4_0);
    let model = load(&q4_file, VisionType::Auto);
    assert!(model.weights().matrices.iter().all(|m| m.buffer == "CPU_REPACK"), "{}", model.layout());
    assert!(model.weights().copied_bytes > 0);
}

#[test]
fn the_embedding_cache_key_changes_with_the_computed_types() {
    let (_, mmproj) = converted(GgmlType::F32);
    let exact = load(&mmproj, VisionType::Auto).content_hash();
    assert_eq!(exact, load(&mmproj, fixed(GgmlType::F32)).content_hash());
    assert_ne!(exact, load(&mmproj, fixed(GgmlType::Bf16)).content_hash(), "BF16 embeddings must not hit F32 entries");
    assert_ne!(load(&mmproj, fixed(GgmlType::Bf16)).content_hash(), load(&mmproj, fixed(GgmlType::F16)).content_hash());
}

#[test]
fn library_values_are_checked_once() {
    assert_eq!(VisionType::parse("auto").unwrap(), VisionType::Auto);
    assert_eq!(VisionType::parse("Bf16").unwrap(), fixed(GgmlType::Bf16));
    for bad in ["bf17", "f64", "i8", "q8_1"] {
        let e = VisionType::parse(bad).unwrap_err();
        assert!(matches!(e, dycoke::Error::Setting { setting: dycoke::Setting::VisionType, .. }), "{bad}: {e:?}");
    }
    assert!(VisionType::new(GgmlType::I32).is_err());
}

fn dycoke(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dycoke")).args(args).output().expect("run dycoke")
}

#[test]
fn the_command_line_says_which_layout_it_chose_and_refuses_bad_types() {
    let (llm, mmproj) = converted(GgmlType::F32);
    let (llm, mmproj) = (llm.to_str().unwrap(), mmproj.to_str().unwrap());

    let out = dycoke(&["info", mmproj, "--vision-type", "bf16"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("vision weights: F32 file -> BF16 (asked for): 14 BF16 in CPU"), "{text}");
    let out = dycoke(&["info", mmproj]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vision weights: F32 file -> F32 (kept): 14 F32 mapped"), "{text}");

    let video = dir().join("clip.mp4");
    let out = dycoke(&["run", "-m", llm, "--mmproj", mmproj, "--video", video.to_str().unwrap(), "--frames", "2", "-p", "What?", "-n", "2",
        "-t", "2", "--vision-type", "q8_0", "--timings"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("vision weights: F32 file -> Q8_0 (asked for): 14 Q8_0 in CPU"), "{err}");

    for (bad, says) in [("bogus", "\"bogus\" is unknown"), ("i32", "I32 is not one the matrices can be converted to"), ("", "\"\" is unknown")] {
        for cmd in [vec!["run", "-m", llm, "--mmproj", mmproj, "-p", "hi", "--vision-type", bad], vec!["info", mmproj, "--vision-type", bad]] {
            let out = dycoke(&cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
            assert!(err.contains("--vision-type: vision weight type") && err.contains(says) && err.contains("auto, f32, f16, bf16, q8_0"), "{cmd:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}
