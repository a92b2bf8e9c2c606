//! ggml's RPC backend on loopback: `dycoke rpc-server` processes started by the tests, the Qwen2
//! LLM placed on their devices (whose memory is not this process's) against the same model on the
//! CPU, and the errors a client gets from addresses that do not lead to a usable server.
//!
//! Tolerance: the prompt's last logits within 1e-3 of their standard deviation (max abs difference)
//! and identical greedy tokens, against the CPU with the weights in ggml's plain layout. The server
//! computes with the same CPU kernels on the plain layout (an RPC buffer is not the CPU's, so
//! nothing is repacked there) and the scheduler copies activations between the processes exactly,
//! so in practice they agree to the bit (every case here measured 0). The local CPU's repacked layouts (the default) multiply
//! with another summation order and other activation blocks, which on the random Q4_K model moves
//! the logits by about 5e-2 of their spread: that is a property of the CPU's repacking, measured by
//! the tests of the weights, not of RPC.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::rpc::RpcServer;
use common::{argmax, max_abs_diff, std_dev};
use dycoke::ggml::{Device, DeviceKind, GgmlType};
use dycoke::gguf::GgufFile;
use dycoke::llm::qwen2::Qwen2;
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::tokenizer::Tokenizer;
use dycoke::weights::Placement;

const THREADS: usize = 2;
const GREEDY: usize = 12;
const LOGIT_TOLERANCE: f64 = 1e-3;

/// Two servers for the whole test binary, their devices added to this process. A server serves one
/// client process at a time, so the tests that run `dycoke` processes start servers of their own.
fn servers() -> &'static [(RpcServer, Device); 2] {
    static SERVERS: OnceLock<[(RpcServer, Device); 2]> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let start = || {
            let server = RpcServer::start();
            let names = dycoke::model::add_rpc_servers(std::slice::from_ref(&server.endpoint)).expect("the RPC server answers");
            assert_eq!(names.len(), 1, "one device per server: {names:?}");
            let device = Device::by_name(&names[0]).expect("the added device is listed");
            assert_eq!(device.description(), server.endpoint, "ggml describes an RPC device by its endpoint");
            (server, device)
        };
        [start(), start()]
    })
}

fn prompt(tok: &Tokenizer) -> Vec<u32> {
    tok.encode("<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n", false, true)
}

/// The prompt's last logits, GREEDY greedy tokens, and the context's timings (with the bytes moved
/// between devices).
struct Answer {
    logits: Vec<f32>,
    tokens: Vec<usize>,
    timings: dycoke::llm::Timings,
}

/// `Answer` with the weights placed by `placement` and the KV cache on its first device; each
/// device of the placement must hold matrices.
fn answer(path: &Path, placement: Placement) -> Answer {
    let file = Arc::new(GgufFile::open(path).unwrap());
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let model = Arc::new(Qwen2::load(file, placement.clone()).unwrap());
    let matrices = &model.weights().matrices;
    let offload = [&[placement.device][..], &placement.split].concat();
    for d in offload.iter().filter(|d| placement.gpu_layers > 0 && d.kind() != DeviceKind::Cpu) {
        // ggml names an RPC buffer type by the device's index on its server and the endpoint.
        let endpoint = format!("[{}]", d.description());
        assert!(matrices.iter().any(|m| m.buffer.ends_with(&endpoint)), "no matrix on {}: {:?}", d.name(), model.weights().buffers);
    }
    let local = matrices.iter().filter(|m| !m.buffer.starts_with("RPC")).count();
    assert_eq!(local > 0, placement.gpu_layers < model.params().n_layer, "matrices in local memory: {local}");
    let prompt = prompt(&tok);
    let opts = LlmOptions { device: placement.device, split: placement.split.clone(), ..LlmOptions::new(512, THREADS) };
    let mut ctx = LlmContext::new(model, &opts).unwrap();
    let logits = ctx.eval(&[Segment::Tokens(&prompt)]).unwrap().to_vec();
    let mut tokens = vec![argmax(&logits)];
    for _ in 1..GREEDY {
        let next = argmax(ctx.eval(&[Segment::Tokens(&[*tokens.last().unwrap() as u32])]).unwrap());
        tokens.push(next);
    }
    Answer { logits, tokens, timings: ctx.timings().clone() }
}

fn assert_same(path: &Path, what: &str, cpu: &Answer, other: &Answer) {
    let rel = f64::from(max_abs_diff(&cpu.logits, &other.logits)) / std_dev(&cpu.logits);
    eprintln!("{} {what}: logits max diff / std {rel:.2e}", path.display());
    assert!(rel <= LOGIT_TOLERANCE, "{} {what}: logits differ by {rel:.3e} of their spread", path.display());
    assert_eq!(cpu.tokens, other.tokens, "{} {what}: greedy tokens differ", path.display());
}

/// The layers (`blk.N.`) whose matrices are in `device`'s memory.
fn layers_on(path: &Path, placement: &Placement, device: Device) -> Vec<usize> {
    let model = Qwen2::load(Arc::new(GgufFile::open(path).unwrap()), placement.clone()).unwrap();
    let endpoint = format!("[{}]", device.description());
    let mut layers: Vec<usize> = model
        .weights()
        .matrices
        .iter()
        .filter(|m| m.buffer.ends_with(&endpoint))
        .filter_map(|m| m.name.strip_prefix("blk.")?.split('.').next()?.parse().ok())
        .collect();
    layers.dedup();
    layers
}

fn check_model(path: &Path, n_layer: usize) {
    let [(_, rpc0), (_, rpc1)] = servers();
    let cpu = answer(path, Placement { repack: false, ..Placement::cpu() });
    let all = answer(path, Placement { device: *rpc0, gpu_layers: 99, repack: false, ..Placement::cpu() });
    assert_same(path, "all layers on an RPC device", &cpu, &all);
    // Half the layers on the second server, the rest on the local CPU.
    let half = answer(path, Placement { device: *rpc1, gpu_layers: n_layer / 2, repack: false, ..Placement::cpu() });
    assert_same(path, "half the layers on an RPC device", &cpu, &half);
    // A third of the layers on each server (`--device rpc0,rpc1 -ngl 2n/3`), the rest on the CPU.
    let thirds = answer(path, Placement { device: *rpc0, split: vec![*rpc1], gpu_layers: n_layer * 2 / 3, repack: false, ..Placement::cpu() });
    assert_same(path, "layers split over the CPU and two RPC devices", &cpu, &thirds);
    // Every layer over the two servers in shares of 3 to 1 (`--device rpc0,rpc1 -ts 3,1`).
    let shares = Placement { device: *rpc0, split: vec![*rpc1], gpu_layers: n_layer, tensor_split: vec![3.0, 1.0], repack: false };
    assert_same(path, "layers split 3:1 over two RPC devices", &cpu, &answer(path, shares.clone()));
    let quarter = n_layer * 3 / 4;
    assert_eq!(layers_on(path, &shares, *rpc0), (0..quarter).collect::<Vec<_>>(), "rpc0 holds the first three quarters");
    assert_eq!(layers_on(path, &shares, *rpc1), (quarter..n_layer).collect::<Vec<_>>(), "rpc1 holds the last quarter");

    // Bytes moved between devices: none on the CPU alone. With every layer and the output on a
    // server, each decode step at least writes the token's embedding row to it and reads the
    // logits back (F32 each); a split over the CPU and two servers also moves the hidden state
    // across each boundary, so it moves more.
    let p = dycoke::llm::qwen2::Qwen2Params::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    assert_eq!((cpu.timings.prefill_transfer_bytes, cpu.timings.decode_transfer_bytes), (0, 0), "the CPU alone moves nothing");
    let floor = (4 * (p.n_vocab + p.n_embd)) as f64;
    let per_step = |a: &Answer| a.timings.transfer_bytes_per_decode_step();
    eprintln!("{}: bytes per decode step: all on rpc0 {}, thirds {}", path.display(), per_step(&all), per_step(&thirds));
    assert!(per_step(&all) >= floor, "all on rpc0: {} bytes per step, below {floor}", per_step(&all));
    assert!(per_step(&thirds) >= per_step(&all) + (4 * p.n_embd) as f64, "thirds: {} vs all on rpc0: {}", per_step(&thirds), per_step(&all));
    assert!(all.timings.prefill_transfer_bytes > 0);
}

#[test]
fn the_llm_on_rpc_devices_matches_the_cpu() {
    for ty in [GgmlType::F16, GgmlType::Q4K] {
        check_model(&common::random_model(ty), gguf_tools::random::Qwen2Spec::default().n_layer);
    }
    if let Some(real) = common::real_model() {
        check_model(&real, 24);
    }
}

/// `dycoke run --rpc ENDPOINT --device rpc0` on the random model: its exit status and stderr, and
/// how long it took.
fn run_with_rpc(endpoint: &str) -> (bool, String, Duration) {
    let model = common::random_model(GgmlType::F16);
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["run", "-m"])
        .arg(&model)
        .args(["--rpc", endpoint, "--device", "rpc0", "-ngl", "99", "-n", "2", "-p", "hi"])
        .output()
        .expect("run dycoke");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), start.elapsed())
}

#[test]
fn unusable_servers_are_clear_errors() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let cases = [
        (format!("127.0.0.1:{free}"), "cannot connect"),
        (format!("127.0.0.1:{silent_port}"), "did not complete the handshake"),
        ("127.0.0.1".to_string(), "bad RPC endpoint"),
        ("127.0.0.1:99999".to_string(), "bad RPC endpoint"),
        ("host.invalid:50052".to_string(), "cannot resolve"),
    ];
    for (endpoint, expected) in cases {
        let (ok, stderr, took) = run_with_rpc(&endpoint);
        assert!(!ok, "--rpc {endpoint} succeeded");
        assert!(stderr.contains(expected), "--rpc {endpoint}: expected {expected:?} in:\n{stderr}");
        assert!(!stderr.contains("GGML_ASSERT") && !stderr.contains("panicked"), "--rpc {endpoint}:\n{stderr}");
        assert!(took < Duration::from_secs(20), "--rpc {endpoint} took {took:?}");
    }
    drop(silent);
}

#[test]
fn a_device_name_outside_the_servers_lists_them() {
    let server = RpcServer::start();
    for (device, expected) in [("rpc5", "cpu, rpc0"), ("rpc0,cpu", "offload devices only"), ("rpc0,rpc0", "twice"), ("rpc0,rpc9", "rpc9")] {
        let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["run", "-m"])
            .arg(common::random_model(GgmlType::F16))
            .args(["--rpc", &server.endpoint, "--device", device, "-ngl", "99", "-n", "2", "-p", "hi"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--device {device}: {stderr}");
        assert!(stderr.contains(expected), "--device {device}: expected {expected:?} in {stderr}");
    }
    let second = RpcServer::start();
    let servers = format!("{},{}", server.endpoint, second.endpoint);
    for (device, split, expected) in [
        ("rpc0", "1,1", "2 shares for 1 offload device"),
        ("rpc0,rpc1", "1", "1 shares for 2 offload device"),
        ("rpc0,rpc1", "1,NaN", "NaN is not a finite share"),
        ("rpc0,rpc1", "1,inf", "inf is not a finite share"),
        ("rpc0,rpc1", "0,0", "add up to 0"),
        ("rpc0,rpc1", "1,x", "invalid float"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["run", "-m"])
            .arg(common::random_model(GgmlType::F16))
            .args(["--rpc", &servers, "--device", device, "-ngl", "99", "-ts", split, "-n", "2", "-p", "hi"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "-ts {split}: {stderr}");
        assert!(stderr.contains(expected) && !stderr.contains("panicked"), "-ts {split}: expected {expected:?} in {stderr}");
        if !expected.contains("float") {
            assert!(stderr.contains("-ts/--tensor-split"), "the error names the flag: {stderr}");
        }
    }
    // The servers' devices as --device takes them.
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke")).args(["info", "--list-devices", "--rpc", &servers]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, endpoint) in [("cpu", ""), ("rpc0", server.endpoint.as_str()), ("rpc1", second.endpoint.as_str())] {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(name) && l.contains(endpoint) && l.contains("MiB free")), "{name} {endpoint} in:\n{stdout}");
    }
}

#[test]
fn the_cli_answers_on_an_rpc_device_as_on_the_cpu() {
    let server = RpcServer::start();
    let model = common::random_model(GgmlType::Q8_0);
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["run", "-m"])
            .arg(&model)
            .args(["-n", "8", "-t", "2", "--ignore-eos", "-p", "colours"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let cpu = run(&[]);
    let rpc = run(&["--rpc", &server.endpoint, "--device", "rpc0", "-ngl", "99"]);
    assert_eq!(String::from_utf8_lossy(&cpu), String::from_utf8_lossy(&rpc));
}

#[test]
fn the_server_rejects_bad_settings_before_serving() {
    let dycoke = env!("CARGO_BIN_EXE_dycoke");
    for (args, expected) in [
        (vec!["--host", "localhost"], "IPv4"),
        (vec!["--port", "0"], "bad RPC endpoint"),
        (vec!["-t", "0"], "thread"),
        (vec!["--device", "nonesuch"], "nonesuch"),
    ] {
        let out = Command::new(dycoke).arg("rpc-server").args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} served");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    let help = Command::new(dycoke).args(["rpc-server", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("NO AUTHENTICATION"));
}

/// The LLaVA-OneVision fixture on the fixture video with DyCoke's defaults (TTM in the vision
/// graph, pruning during decode), through `dycoke run` with `extra` options: (answer, logits after
/// the prompt, the `--stats` object, stderr).
fn ask_fixture_video(tag: &str, extra: &[&str]) -> (String, Vec<f32>, serde_json::Value, String) {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let dump = common::scratch_dir().join(format!("rpc-{tag}.bin"));
    let clip = common::llava::dir().join("clip.mp4");
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["run", "-m"])
        .arg(&llm)
        .arg("--mmproj")
        .arg(&mmproj)
        .arg("--video")
        .arg(&clip)
        .args(["--frames", "8", "-p", "What happens in this video?", "-n", "24", "--ignore-eos", "-t", "2", "--no-repack", "--stats", "--timings"])
        .arg("--dump-logits")
        .arg(&dump)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tag}: {stderr}");
    let logits = std::fs::read(&dump).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let stats = serde_json::from_str(stderr.lines().last().unwrap()).expect("--stats prints one JSON object last");
    (String::from_utf8(out.stdout).unwrap(), logits, stats, stderr.into_owned())
}

/// The "KiB per decode step" of `--timings` output.
fn kib_per_step(stderr: &str) -> f64 {
    let line = stderr.lines().find(|l| l.starts_with("moved:")).unwrap_or_else(|| panic!("no moved: line in\n{stderr}"));
    let before = line.split(" KiB per decode step").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The vision tower, TTM, the KV cache and DyCoke's pruning all on an RPC device: the CPU's answer,
/// its logits within the tolerance above, and the same compression counters (TTM dropped tokens,
/// pruning ran at every step).
#[test]
fn a_dycoke_video_answer_on_an_rpc_device_matches_the_cpu() {
    // Where the run below puts the vision tower: every matrix in the server's memory.
    let [(_, rpc0), _] = servers();
    let (_, mmproj) = common::llava::converted(GgmlType::F32);
    let vision = dycoke::vision::VisionModel::load(&mmproj, Placement { device: *rpc0, gpu_layers: 99, repack: false, ..Placement::cpu() }).unwrap();
    let matrices = &vision.weights().matrices;
    assert!(!matrices.is_empty() && matrices.iter().all(|m| m.buffer.starts_with("RPC")), "{:?}", vision.weights().buffers);

    let server = RpcServer::start();
    // Also with temporal reuse, whose held keys and values live on the device between graphs.
    for (tag, flags) in [("plain", &[][..]), ("reuse", &["--vision-reuse", "1:0.5"][..])] {
        let cpu = ask_fixture_video(&format!("cpu-{tag}"), flags);
        let rpc_flags = [flags, &["--rpc", &server.endpoint, "--device", "rpc0", "-ngl", "99"]].concat();
        let rpc = ask_fixture_video(&format!("rpc-{tag}"), &rpc_flags);
        let rel = f64::from(max_abs_diff(&cpu.1, &rpc.1)) / std_dev(&cpu.1);
        eprintln!("video on RPC ({tag}): logits max diff / std {rel:.2e}; stats {}", rpc.2);
        assert!(rel <= LOGIT_TOLERANCE, "{tag}: logits differ by {rel:.3e} of their spread");
        assert_eq!(cpu.0, rpc.0, "{tag}: answers");
        for key in ["visual_tokens_before_ttm", "visual_tokens_after_ttm", "decode_steps", "mean_kept_fraction"] {
            assert_eq!(cpu.2[key], rpc.2[key], "{tag}: {key}: {} vs {}", cpu.2, rpc.2);
        }
        assert!(rpc.2["visual_tokens_after_ttm"].as_u64() < rpc.2["visual_tokens_before_ttm"].as_u64(), "TTM dropped tokens: {}", rpc.2);
        assert_eq!(rpc.2["decode_steps"], 23, "pruning ran at every step: {}", rpc.2);
        assert!(rpc.2["mean_kept_fraction"].as_f64().unwrap() < 1.0, "pruning kept fewer rows: {}", rpc.2);
        // --timings reports the bytes moved between devices, which on the CPU alone are none.
        assert!(!cpu.3.contains("between devices") && rpc.3.contains("KiB per decode step"), "{tag}:\n{}\n{}", cpu.3, rpc.3);
        if tag == "plain" {
            // The pruned layers gather their rows where the cache is: a pruned step moves what a
            // plain step moves plus the scoring layer's attention probabilities (F32, each head
            // over the attended positions, for the selection on the CPU) and the view's row
            // numbers and mask (I32 and F16 per row) back, not the layers' caches (which a
            // gather on the CPU would copy there at every step).
            let unpruned = ask_fixture_video("rpc-no-dp", &[&rpc_flags[..], &["--no-dp"]].concat());
            let (pruned, plain) = (kib_per_step(&rpc.3), kib_per_step(&unpruned.3));
            let (llm, _) = common::llava::converted(GgmlType::F32);
            let p = dycoke::llm::qwen2::Qwen2Params::from_gguf(&GgufFile::open(&llm).unwrap()).unwrap();
            let positions = rpc.2["cache_positions_last_step"].as_u64().unwrap() as f64;
            let attended = (positions / 256.0).ceil() * 256.0;
            let extra = (4.0 * attended * p.n_head as f64 + 6.0 * positions) / 1024.0;
            eprintln!("KiB per decode step on RPC: pruned {pruned}, not pruned {plain}, allowed extra {extra:.1}");
            assert!(pruned <= plain + extra + 0.2, "a pruned step moved {pruned} KiB, a plain one {plain} KiB");
        }
        if tag == "reuse" {
            let skipped = |err: &str| err.lines().find(|l| l.contains("temporal reuse skipped")).map(str::to_string);
            assert_eq!(skipped(&cpu.3), skipped(&rpc.3), "the same tower work skipped");
            assert!(skipped(&rpc.3).is_some_and(|l| !l.contains("skipped 0.0%")), "temporal reuse skipped work:\n{}", rpc.3);
        }
    }
}

/// A server killed in the middle of an answer: ggml's client aborts the process (nothing can stop
/// that), but the user gets a line that says what happened, and no hang.
#[test]
fn a_server_that_dies_mid_answer_ends_the_run_with_a_clear_error() {
    use std::io::Read;
    let mut server = RpcServer::start();
    let mut client = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["run", "-m"])
        .arg(common::random_model(GgmlType::F16))
        .args(["--rpc", &server.endpoint, "--device", "rpc0", "-ngl", "99", "-n", "2000", "--ignore-eos", "-t", "2", "-p", "hi"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the answer streams, the model is loaded and decoding runs on the server.
    let mut stdout = client.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("the answer starts");
    // Keep the pipe from filling while waiting.
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    server.kill();
    let start = Instant::now();
    while client.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = client.kill();
            panic!("the client still ran 30 s after its server died");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = client.wait_with_output().unwrap();
    let _ = drain.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("an RPC server stopped answering"), "{stderr}");
}

/// A server that cannot allocate the weights (its address space limited to 300 MB, less than the
/// real model's 374 MB of weights) makes loading fail with an error naming the device and the
/// size, not an abort. Needs the real model and `prlimit` (util-linux); skipped without them.
#[test]
fn a_server_without_memory_is_a_clear_error() {
    let Some(real) = common::real_model() else { return };
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit not found");
        return;
    }
    let server = RpcServer::start_under(&["prlimit", "--as=300000000"]);
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["run", "-m"])
        .arg(&real)
        .args(["--rpc", &server.endpoint, "--device", "rpc0", "-ngl", "99", "-n", "2", "-p", "hi"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not allocate") && stderr.contains("RPC0"), "{stderr}");
}
