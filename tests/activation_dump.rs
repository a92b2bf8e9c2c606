//! `DYCOKE_DUMP_DIR`: both graphs write their named activations, layer by layer, with the shapes
//! they have, and the last ones written equal what the engine returns. (Its own test binary: the
//! variable is read once per process.)

mod common;

use std::path::Path;

use common::llava::{converted, dir};
use dycoke::ggml::Device;
use dycoke::ggml::GgmlType;
use dycoke::llm::{LlmContext, LlmOptions, Segment};
use dycoke::media::{FrameSelection, Sampling};
use dycoke::vision::{VisionContext, VisionModel};
use dycoke::weights::Placement;
use dycoke::{Model, ModelOptions};

/// The `ne` of a dumped tensor, and its values.
fn dumped(dir: &Path, call: usize, name: &str) -> ([i64; 4], Vec<f32>) {
    let meta = std::fs::read_to_string(dir.join(format!("{call}-{name}.json"))).unwrap_or_else(|e| panic!("{call}-{name}.json: {e}"));
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["name"], name);
    assert_eq!(meta["call"], call);
    let ne: Vec<i64> = meta["ne"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let values: Vec<f32> =
        std::fs::read(dir.join(format!("{call}-{name}.f32"))).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(values.len() as i64, ne.iter().product::<i64>(), "{name}: values for its shape");
    (ne.try_into().unwrap(), values)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn named_activations_of_both_graphs_are_dumped() {
    let out = tempfile::tempdir().unwrap();
    // Set before anything of ggml runs in this process (the only test of this binary).
    std::env::set_var("DYCOKE_DUMP_DIR", out.path());
    let d = out.path();
    let (llm, mmproj) = converted(GgmlType::F32);

    // The vision graph: six frames in graphs of four, then TTM.
    let vision = VisionModel::load(&mmproj, Placement::cpu()).unwrap();
    let p = vision.params().clone();
    let t = &p.tower;
    let mut ctx = VisionContext::new(vision.clone(), Device::cpu(), 2, 4).unwrap();
    let sampling = Sampling::new(FrameSelection::Count(6), 64).unwrap();
    let frames = dycoke::media::load_video(&dir().join("clip.mp4"), &sampling, 2, &mut |_, _| true).unwrap().frames;
    let encoded = ctx.encode_video(&frames, Some(ttm07()), &mut |_, _| true).unwrap();
    let mut ttm_rows = Vec::new();
    for (call, n) in [(0, 4i64), (1, 2)] {
        for il in 0..t.n_layer {
            for name in ["v_attn_norm", "v_attn_out", "v_ffn_inp", "v_ffn_norm", "v_ffn_out", "v_l_out"] {
                let (ne, _) = dumped(d, call, &format!("{name}-{il}"));
                assert_eq!(ne, [t.hidden as i64, t.n_patches() as i64, n, 1], "{call}-{name}-{il}");
            }
        }
        assert_eq!(dumped(d, call, "v_projected").0, [p.out_dim as i64, t.n_patches() as i64, n, 1]);
        assert_eq!(dumped(d, call, "v_pooled").0, [p.out_dim as i64, p.tokens_per_frame() as i64, n, 1]);
        let kept = dycoke::compress::ttm::kept_count(n as usize, p.tokens_per_frame(), 0.7) as i64;
        assert_eq!(dumped(d, call, "v_ttm_rows").0, [kept, 1, 1, 1]);
        let (ne, rows) = dumped(d, call, "v_ttm_out");
        assert_eq!(ne, [p.out_dim as i64, kept, 1, 1]);
        ttm_rows.extend(rows);
    }
    assert!(!d.join("2-v_l_out-0.json").exists(), "two vision graph runs");
    assert_eq!(bits(&ttm_rows), bits(&encoded.rows), "the dumped TTM output is what the encoder returned");

    // The language model: a prefill of 20 tokens, then one decode step.
    let model = Model::load(&ModelOptions::new(llm)).unwrap();
    let lp = model.llm().params().clone();
    let mut llm = LlmContext::new(model.llm().clone(), &LlmOptions::new(256, 2)).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| 3 + i * 5).collect();
    let logits = llm.eval(&[Segment::Tokens(&prompt)]).unwrap().to_vec();
    let step = llm.eval(&[Segment::Tokens(&[7])]).unwrap().to_vec();
    let e = lp.n_embd as i64;
    for (call, n) in [(0, 20i64), (1, 1)] {
        for il in 0..lp.n_layer {
            // The last layer's FFN sees only the row whose logits are wanted.
            let rows = if il + 1 == lp.n_layer { 1 } else { n };
            for (name, want) in [
                ("attn_norm", [e, n, 1, 1]),
                ("Qcur", [lp.head_dim as i64, lp.n_head as i64, n, 1]),
                ("Kcur", [lp.head_dim as i64, lp.n_head_kv as i64, n, 1]),
                ("Vcur", [lp.n_embd_kv() as i64, n, 1, 1]),
                ("attn_out", [e, n, 1, 1]),
                ("ffn_inp", [e, rows, 1, 1]),
                ("ffn_out", [e, rows, 1, 1]),
                ("l_out", [e, rows, 1, 1]),
            ] {
                assert_eq!(dumped(d, call, &format!("{name}-{il}")).0, want, "{call}-{name}-{il}");
            }
        }
        let (ne, out) = dumped(d, call, "result_output");
        assert_eq!(ne, [lp.n_vocab as i64, 1, 1, 1]);
        let want = if call == 0 { &logits } else { &step };
        assert_eq!(bits(&out), bits(want), "call {call}: the dumped logits are the ones returned");
    }
    // The last layer's output through the output norm is what the head multiplies.
    let last = lp.n_layer - 1;
    assert_eq!(dumped(d, 1, "result_norm").0, [e, 1, 1, 1]);
    assert!(dumped(d, 1, &format!("l_out-{last}")).1.iter().all(|x| x.is_finite()));
    // No name of ggml's own making ("x (view)") is written.
    for entry in std::fs::read_dir(d).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(!name.contains(' ') && !name.contains('('), "{name}");
    }
}

/// TTM with K = 0.7.
fn ttm07() -> dycoke::compress::TtmSettings {
    dycoke::compress::TtmSettings::new(0.7).unwrap()
}
