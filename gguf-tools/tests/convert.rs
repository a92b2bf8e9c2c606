//! `convert` on the tiny LLaVA-OneVision fixture: the plan it makes, and each way a checkpoint can
//! be wrong giving its own error that names the file and tensor, before anything is written.

use std::path::{Path, PathBuf};

use dycoke::ggml::GgmlType;
use gguf_tools::convert::{convert, plan, ConvertError, ConvertOptions};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llava-tiny/hf")
}

fn options(input: &Path, out: &Path, outtype: GgmlType) -> ConvertOptions {
    ConvertOptions { input: input.to_path_buf(), prefix: out.join("tiny"), outtype, vision_type: None }
}

/// A copy of the fixture whose config.json and tensors `edit_config` and `edit_tensors` change.
fn broken(
    tmp: &Path,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let dir = tmp.join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "processor_config.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit_tensors(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

/// Converting `dir` fails, writes nothing, and says `words`.
fn fails(dir: &Path, tmp: &Path, words: &[&str]) -> ConvertError {
    let out = tmp.join("out");
    let err = convert(&options(dir, &out, GgmlType::F16), &mut |_, _, _| {}).expect_err("the conversion must fail");
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not say {w:?}");
    }
    assert!(!out.exists(), "a failed conversion wrote {}", out.display());
    err
}

#[test]
fn the_plan_names_every_tensor_source_shape_and_type() {
    let tmp = tempfile::tempdir().unwrap();
    let p = plan(&options(&fixture(), tmp.path(), GgmlType::Q8_0)).unwrap();
    // The fixture: a 2-layer Qwen2 (12 tensors a layer, embedding, final norm; tied) and a 2-block
    // SigLIP (16 a block, 3 embeddings), a 2-layer projector and the newline.
    assert_eq!(p.llm.tensors.len(), 2 * 12 + 2);
    assert_eq!(p.mmproj.tensors.len(), 3 + 2 * 16 + 4 + 1);
    assert_eq!(p.llm.path, tmp.path().join("tiny-llm.gguf"));
    assert_eq!(p.mmproj.path, tmp.path().join("tiny-mmproj.gguf"));
    let find = |name: &str| p.llm.tensors.iter().chain(&p.mmproj.tensors).find(|t| t.name == name).unwrap_or_else(|| panic!("{name} planned"));
    let q = find("blk.1.attn_k.weight");
    assert_eq!((q.source.as_str(), q.shape.as_slice(), q.ty), ("language_model.model.layers.1.self_attn.k_proj.weight", &[64u64, 32][..], GgmlType::Q8_0));
    // The vision side stays in float unless asked for (layout::default_vision_type).
    let mm = find("mm.0.weight");
    assert_eq!((mm.source.as_str(), mm.shape.as_slice(), mm.ty), ("multi_modal_projector.linear_1.weight", &[32u64, 64][..], GgmlType::F16));
    assert_eq!(find("v.blk.1.ffn_down.weight").ty, GgmlType::F16);
    let asked = plan(&ConvertOptions { vision_type: Some(GgmlType::Q8_0), ..options(&fixture(), tmp.path(), GgmlType::Q8_0) }).unwrap();
    let mm = asked.mmproj.tensors.iter().find(|t| t.name == "mm.0.weight").unwrap();
    assert_eq!(mm.ty, GgmlType::Q8_0);
    let patch = find("v.patch_embd.weight");
    assert_eq!((patch.shape.as_slice(), patch.ty), (&[14u64, 14, 3, 32][..], GgmlType::F16));
    assert_eq!(find("v.position_embd.weight").ty, GgmlType::F32);
    assert_eq!(find("model.image_newline").source, "image_newline");
    assert!(p.mmproj.tensors.iter().all(|t| !t.source.contains("post_layernorm")), "the post-LN is not converted");
    assert!(p.llm.tensors.iter().all(|t| t.name != "output.weight"), "tied embeddings have no output matrix");
    assert!(p.llm.tensors.iter().all(|t| t.shard.ends_with("model.safetensors")));
    assert!(!p.llm.path.exists(), "planning writes nothing");
}

#[test]
fn a_missing_tensor_is_named_with_its_checkpoint_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |t| t.retain(|(n, ..)| n != "vision_tower.encoder.layers.1.self_attn.q_proj.weight"));
    let e = fails(&dir, tmp.path(), &["v.blk.1.attn_q.weight", "self_attn.q_proj.weight"]);
    assert!(matches!(e, ConvertError::MissingTensor { .. }), "{e:?}");
}

#[test]
fn a_tensor_the_config_does_not_describe_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |t| {
        let norm = t.iter().find(|(n, ..)| n == "language_model.model.layers.0.input_layernorm.weight").unwrap().clone();
        t.push(("language_model.model.layers.7.input_layernorm.weight".into(), norm.1, norm.2, norm.3));
    });
    let e = fails(&dir, tmp.path(), &["model.safetensors", "language_model.model.layers.7.input_layernorm.weight", "blk.7.attn_norm.weight"]);
    assert!(matches!(e, ConvertError::UnexpectedTensor { .. }), "{e:?}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |t| t.push(("foo.bar".into(), Dtype::F32, vec![1], vec![0; 4])));
    let e = fails(&dir, tmp.path(), &["foo.bar", "not part of a LLaVA-OneVision checkpoint"]);
    assert!(matches!(e, ConvertError::UnexpectedTensor { .. }), "{e:?}");
}

#[test]
fn two_tensors_with_one_destination_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |t| {
        let nl = t.iter().find(|(n, ..)| n == "image_newline").unwrap().clone();
        t.push(("model.image_newline".into(), nl.1, nl.2, nl.3));
    });
    let e = fails(&dir, tmp.path(), &["image_newline", "model.image_newline", "both become"]);
    assert!(matches!(e, ConvertError::DuplicateTensor { .. }), "{e:?}");
}

#[test]
fn integer_tensors_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |t| {
        let b = t.iter_mut().find(|(n, ..)| n == "multi_modal_projector.linear_2.bias").unwrap();
        b.1 = Dtype::I32;
    });
    let e = fails(&dir, tmp.path(), &["model.safetensors", "multi_modal_projector.linear_2.bias", "I32"]);
    assert!(matches!(e, ConvertError::TensorType { .. }), "{e:?}");
}

#[test]
fn shapes_must_match_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |c| c["vision_config"]["intermediate_size"] = 96.into(), |_| {});
    let e = fails(&dir, tmp.path(), &["vision_tower.encoder.layers.0.mlp.fc1", "[64", "[96"]);
    assert!(matches!(e, ConvertError::TensorShape { .. }), "{e:?}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |c| c["text_config"]["num_key_value_heads"] = 3.into(), |_| {});
    let e = fails(&dir, tmp.path(), &["config.json", "n_head_kv 3"]);
    assert!(matches!(e, ConvertError::Invalid { .. }), "{e:?}");
}

#[test]
fn configuration_problems_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |c| c["model_type"] = "llava".into(), |_| {});
    assert!(matches!(fails(&dir, tmp.path(), &["config.json", "\"llava\""]), ConvertError::Unsupported { .. }));

    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |c| c["text_config"]["hidden_size"] = (-3).into(), |_| {});
    assert!(matches!(fails(&dir, tmp.path(), &["config.json", "text_config.hidden_size is -3"]), ConvertError::Invalid { .. }));

    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |c| c["vision_feature_layer"] = 99.into(), |_| {});
    assert!(matches!(fails(&dir, tmp.path(), &["vision_feature_layer", "99"]), ConvertError::Invalid { .. }));

    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |_| {});
    std::fs::write(dir.join("config.json"), "{").unwrap();
    assert!(matches!(fails(&dir, tmp.path(), &["config.json", "not valid JSON"]), ConvertError::Json { .. }));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(fails(&dir, tmp.path(), &["config.json"]), ConvertError::Io { .. }));
}

#[test]
fn unusable_weights_and_types_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = broken(tmp.path(), |_| {}, |_| {});
    std::fs::write(dir.join("model.safetensors"), b"garbage").unwrap();
    assert!(matches!(fails(&dir, tmp.path(), &["model.safetensors", "not a safetensors file"]), ConvertError::Safetensors { .. }));
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(fails(&dir, tmp.path(), &["no model*.safetensors files"]), ConvertError::NoWeights { .. }));

    let err = plan(&options(&fixture(), tmp.path(), GgmlType::Q4_1)).err().expect("Q4_1 is not a target");
    assert!(matches!(err, ConvertError::OutputType { ty: GgmlType::Q4_1 }), "{err:?}");
    let err = plan(&ConvertOptions { vision_type: Some(GgmlType::Q4_1), ..options(&fixture(), tmp.path(), GgmlType::F16) }).err().expect("Q4_1 is not a vision target");
    assert!(matches!(err, ConvertError::OutputType { ty: GgmlType::Q4_1 }), "{err:?}");
    assert!(err.to_string().contains("q8_0"), "{err}");
}
