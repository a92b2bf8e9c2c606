//! `dycoke bench video` end to end on the tiny LLaVA fixture: one JSON object per mode (vision
//! setting and compression), the baseline first, with the fields the report promises and a time to
//! first token that contains the vision and prefill it waited for; bad settings are clear errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use dycoke::ggml::GgmlType;

fn dycoke(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dycoke")).args(args).output().expect("run dycoke")
}

fn clip() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/clip.mp4").to_str().unwrap().to_string()
}

const FIELDS: [&str; 9] = ["mode", "frames", "visual_tokens", "vision_s", "prefill_s", "ttft_s", "decode_tok_s", "kv_bytes", "peak_rss_bytes"];

#[test]
fn json_gives_one_object_per_mode_with_the_time_to_first_token() {
    let (llm, f32_mmproj) = common::llava::converted(GgmlType::F32);
    let (_, f16_mmproj) = common::llava::converted(GgmlType::F16);
    let vision = format!("f32={},f16={}", f32_mmproj.display(), f16_mmproj.display());
    let (llm, video) = (llm.to_str().unwrap(), clip());
    let out = dycoke(&["bench", "video", "-m", llm, "--vision-modes", &vision, "--video", &video, "--frames", "4", "--gen", "2", "--reps", "1", "--json", "-t", "2"]);
    assert!(out.status.success(), "bench video failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["f32/none", "f32/dycoke", "f16/none", "f16/dycoke"]);
    for r in &rows {
        for f in FIELDS {
            assert!(r.get(f).is_some(), "{f} missing from {r}");
        }
        let num = |f: &str| r[f].as_f64().unwrap_or_else(|| panic!("{f} is not a number in {r}"));
        assert_eq!(num("frames"), 4.0);
        assert!(num("vision_s") > 0.0 && num("prefill_s") > 0.0 && num("decode_tok_s") > 0.0 && num("kv_bytes") > 0.0, "{r}");
        assert!(num("ttft_s") >= num("vision_s") + num("prefill_s"), "{r}");
        if cfg!(target_os = "linux") {
            assert!(num("peak_rss_bytes") > 0.0, "{r}");
        }
    }
    // The same frames reach every compression setting of a vision setting; DyCoke's TTM keeps fewer.
    let tokens = |i: usize| rows[i]["visual_tokens"].as_u64().unwrap();
    assert!(tokens(1) < tokens(0) && tokens(3) < tokens(2) && tokens(0) == tokens(2), "{rows:?}");
}

#[test]
fn the_table_shows_time_to_first_token_and_gains_over_the_baseline() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let out = dycoke(&["bench", "video", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "--video", &clip(),
        "--frames", "4", "--gen", "2", "--reps", "1", "--modes", "dycoke", "-t", "2"]);
    assert!(out.status.success(), "bench video failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("TTFT s") && lines[0].contains("s/frame"), "{text}");
    // The baseline runs even though --modes does not list it, then the mode and its gains.
    let stem = mmproj.file_stem().unwrap().to_str().unwrap();
    assert!(lines[1].contains(&format!("{stem}/none")) && lines[2].contains(&format!("{stem}/dycoke")), "{text}");
    assert!(lines[3].contains("gain over the baseline") && lines[3].matches('x').count() >= 6, "{text}");
}

#[test]
fn bad_vision_settings_are_clear_errors() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let (llm, mmproj, video) = (llm.to_str().unwrap(), mmproj.to_str().unwrap(), clip());
    let fails = |args: &[&str], want: &[&str]| {
        let out = dycoke(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
    };
    let video_bench = |vision: &str| vec!["bench", "video", "-m", llm, "--video", &video, "--frames", "4", "--mmproj", vision].into_iter().map(String::from).collect::<Vec<_>>();
    let run = |vision: &str, want: &[&str]| fails(&video_bench(vision).iter().map(String::as_str).collect::<Vec<_>>(), want);
    run(&format!("a={mmproj},a={mmproj}"), &["two vision settings are named \"a\""]);
    run("/nonexistent/v.gguf", &["/nonexistent/v.gguf", "does not exist"]);
    run(&format!("bad name={mmproj}"), &["bad name", "[NAME=]FILE.gguf"]);
    run("f16=", &["[NAME=]FILE.gguf"]);
    fails(&["bench", "fidelity", "-m", llm, "--video", &video, "--frames", "4", "--mmproj", &format!("a={mmproj},a={mmproj}")], &["two vision settings are named \"a\""]);
}

/// `bench fidelity` with two vision settings: the second's features, under each compression
/// setting, against the uncompressed answer on the first's. The F16 tower's features agree with the
/// F32 one's closely but not exactly; the reference's own uncompressed row has no divergence.
#[test]
fn fidelity_compares_vision_settings_with_the_reference() {
    let (llm, f32_mmproj) = common::llava::converted(GgmlType::F32);
    let (_, f16_mmproj) = common::llava::converted(GgmlType::F16);
    let vision = format!("ref={}@type=f32,f16={}@type=f16", f32_mmproj.display(), f16_mmproj.display());
    let out = dycoke(&["bench", "fidelity", "-m", llm.to_str().unwrap(), "--mmproj", &vision, "--video", &clip(), "--frames", "4", "--steps", "4",
        "--modes", "none,dycoke", "--json", "-t", "2"]);
    assert!(out.status.success(), "bench fidelity failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect();
    let names: Vec<String> = rows.iter().map(|r| format!("{}/{}", r["vision"].as_str().unwrap(), r["mode"].as_str().unwrap())).collect();
    assert_eq!(names, ["ref/none", "ref/dycoke", "f16/none", "f16/dycoke"]);
    let num = |i: usize, f: &str| rows[i][f].as_f64().unwrap_or_else(|| panic!("{f} in {}", rows[i]));
    assert_eq!((num(0, "min_frame_cosine"), num(0, "ttm_overlap"), num(0, "mean_kl")), (1.0, 1.0, 0.0), "{}", rows[0]);
    assert_eq!(num(0, "greedy_agreement"), 1.0);
    let cos = num(2, "min_frame_cosine");
    assert!(cos > 0.999 && cos < 1.0, "F16 against F32 features: cosine {cos}");
    assert!(num(2, "ttm_overlap") > 0.5 && num(2, "ttm_overlap") <= 1.0, "{}", rows[2]);
    assert!(num(2, "mean_kl") >= 0.0 && num(3, "mean_kl") >= 0.0);
}
