//! `dycoke batch` end to end: per-item errors do not stop a run, a killed run resumes without
//! redoing finished items, shards split the input without overlap or loss.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dycoke::ggml::GgmlType;
use serde_json::Value;

/// 20 requests over the fixture video and image, two of them broken.
fn write_requests(dir: &Path) -> PathBuf {
    let fixture = common::llava::dir();
    std::fs::copy(fixture.join("clip.mp4"), dir.join("clip.mp4")).unwrap();
    std::fs::copy(fixture.join("image.png"), dir.join("image.png")).unwrap();
    let mut lines = Vec::new();
    for i in 0..12 {
        lines.push(serde_json::json!({"id": format!("v{i}"), "video": "clip.mp4", "question": format!("What happens at moment {i}?"), "frames": 2 + i % 3}).to_string());
    }
    for i in 0..3 {
        lines.push(serde_json::json!({"id": format!("img{i}"), "image": "image.png", "question": format!("Describe detail {i}.")}).to_string());
    }
    for i in 0..3 {
        lines.push(serde_json::json!({"id": format!("mc{i}"), "video": "clip.mp4", "question": "Which is it?", "options": ["red", "green", "blue"], "answer": "B", "task": if i < 2 { "colour" } else { "other" }, "frames": 2}).to_string());
    }
    lines.insert(5, serde_json::json!({"id": "missing", "video": "no-such-video.mp4", "question": "What happens?"}).to_string());
    lines.insert(9, "{\"id\": \"broken\", \"question\": ".to_string());
    assert_eq!(lines.len(), 20);
    let path = dir.join("requests.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn batch_command(input: &Path, output: &Path, extra: &[&str]) -> Command {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dycoke"));
    cmd.args(["batch", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "-n", "3", "--ignore-eos", "-t", "1"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra);
    cmd
}

fn run_batch(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let out = batch_command(input, output, extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    out
}

fn records(output: &Path) -> Vec<Value> {
    std::fs::read_to_string(output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn by_id(records: &[Value]) -> BTreeMap<String, Value> {
    records.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r.clone())).collect()
}

#[test]
fn a_run_records_errors_and_shards_split_without_overlap_or_loss() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_requests(dir.path());
    let output = dir.path().join("results.jsonl");
    let out = run_batch(&input, &output, &[]);
    let all = records(&output);
    assert_eq!(all.len(), 20);
    let errors: Vec<&Value> = all.iter().filter(|r| !r["error"].is_null()).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let all = by_id(&all);
    assert!(all["missing"]["error"].as_str().unwrap().contains("no-such-video.mp4"));
    assert!(all["line 10"]["error"].as_str().unwrap().contains("EOF"), "an unreadable line is recorded under its line number");
    for (id, r) in &all {
        if r["error"].is_null() {
            assert!(r["visual_tokens"].as_u64().unwrap() > 0, "{id}");
            assert!(r["answer"].is_string(), "{id}");
        }
    }
    assert!(["A", "B", "C"].contains(&all["mc0"]["choice"].as_str().unwrap()));
    assert_eq!(all["mc0"]["correct"], Value::Bool(all["mc0"]["choice"] == "B"));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("20 items: 20 done now (2 failed), 0 already done"), "{summary}");
    assert!(summary.contains("colour: ") && summary.contains("/2 correct") && summary.contains("other: "), "{summary}");

    // Three shards: together exactly the items, each answered as in the whole run.
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let shard_out = dir.path().join(format!("shard{i}.jsonl"));
        run_batch(&input, &shard_out, &["--shard", &format!("{i}/3")]);
        for r in records(&shard_out) {
            let id = r["id"].as_str().unwrap().to_string();
            assert_eq!(r["answer"], all[&id]["answer"], "{id}");
            assert!(seen.insert(id.clone()), "{id} in two shards");
        }
    }
    assert_eq!(seen, all.keys().cloned().collect::<BTreeSet<_>>());
}

#[test]
fn a_killed_run_resumes_without_redoing_finished_items() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_requests(dir.path());
    let output = dir.path().join("results.jsonl");
    let lines = |p: &Path| std::fs::read_to_string(p).map(|s| s.lines().count()).unwrap_or(0);

    // Kill it once some items are written.
    let mut child = batch_command(&input, &output, &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
    while lines(&output) < 6 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut before = std::fs::read_to_string(&output).unwrap();
    if before.lines().count() >= 20 {
        // It finished first on a fast machine: leave what a kill at item 6 leaves.
        before = before.lines().take(6).map(|l| format!("{l}\n")).collect();
    }
    // A kill can also cut the last record short.
    std::fs::write(&output, format!("{before}{{\"id\": \"v1")).unwrap();
    let finished = before.lines().count();
    assert!(finished > 0 && finished < 20);

    let out = run_batch(&input, &output, &[]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains(&format!("{} done now", 20 - finished)) && summary.contains(&format!("{finished} already done")), "{summary}");
    let after = std::fs::read_to_string(&output).unwrap();
    assert!(after.starts_with(&before), "finished records are kept as they were");
    let ids: Vec<String> = records(&output).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 20, "no item twice");

    // Nothing left: a third run does nothing.
    let out = run_batch(&input, &output, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in"));
    assert_eq!(lines(&output), 20);
}
