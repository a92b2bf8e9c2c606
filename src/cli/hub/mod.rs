//! Models from the Hugging Face Hub: `-hf REPO[:TYPE][@REV]` and `dycoke pull`.
//!
//! A repository is either a transformers LLaVA-OneVision checkpoint, whose needed files are
//! downloaded and converted to a GGUF pair of TYPE on first use (`dycoke::convert`), or a GGUF
//! repository (an LLM `*.gguf` and an `mmproj*.gguf`), where TYPE picks the quantization by file
//! name. `cache` says where the files live, `client` talks to the Hub, `spec` parses the name.
//!
//! The `hf-hub` crate gives the cache's names (`Repo::folder_name`, refs); its downloads are not
//! used: version 0.4's blocking client resumes but renames a file into the cache without checking
//! its hash and has no offline mode, and 1.0 brings reqwest, tokio and the Xet client. The HTTP
//! here is ureq, which the binary already uses.
//!
//! `-hf` answers from the cache without a request when the revision's model is there (a new
//! revision of a branch is seen by `dycoke pull`, which always asks the Hub and checks every
//! cached file against the hash the Hub reports). `HF_HUB_OFFLINE=1` never asks.

mod cache;
mod client;
pub mod pull;
pub mod spec;

use std::path::{Path, PathBuf};

use dycoke::convert::{self, layout, ConvertOptions};
use dycoke::ggml::GgmlType;

use self::cache::{Caches, RepoCache};
use self::client::Hub;
pub use self::spec::HubSpec;
use super::common::LazyBar;

/// The output type of a converted checkpoint when none is asked for: the checkpoints' own
/// precision (the published llava-hf checkpoints are float16), so nothing is lost; the vision
/// side stays F16 for quantized types too (`layout::default_vision_type`).
pub const DEFAULT_CONVERT_TYPE: GgmlType = GgmlType::F16;

/// The quantization picked in a GGUF repository when none is asked for and it holds several, as
/// llama.cpp's `-hf` does.
const DEFAULT_QUANT: &str = "q4_k_m";

/// Marks errors whose message is whole already (it names the repository), so the command line
/// prints it without an "invalid ..." prefix.
pub const ERROR_WHAT: &str = "Hugging Face model";

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{repo}: {what}: {}", status_text(*status, code, message, *token))]
    Status { repo: String, what: String, status: u16, code: String, message: String, token: bool },
    #[error("{repo}: {what}: cannot reach the Hub at {endpoint} ({problem}); with HF_HUB_OFFLINE=1 a model already in the cache runs without it")]
    Network { repo: String, what: String, endpoint: String, problem: String },
    #[error("{repo}: {problem}")]
    Protocol { repo: String, problem: String },
    #[error("{file}: the download is corrupt: {problem}")]
    Corrupt { file: String, problem: String },
    #[error("{}: cannot write the cache: {source} (HF_HOME, HF_HUB_CACHE and DYCOKE_CACHE choose where it goes)", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Cache(String),
    #[error("{repo}: {problem}")]
    Layout { repo: String, problem: String },
    #[error("{repo}{}: not in the cache, and HF_HUB_OFFLINE is set; run once with a network (or dycoke pull {repo}) first", at_revision(revision))]
    Offline { repo: String, revision: String },
    #[error("{repo}: converting the checkpoint: {source}")]
    Convert { repo: String, source: Box<convert::ConvertError> },
}

fn at_revision(r: &str) -> String {
    if r == "main" { String::new() } else { format!("@{r}") }
}

fn status_text(status: u16, code: &str, message: &str, token: bool) -> String {
    let hint = match status {
        401 | 403 if !token => "; the repository is gated, private or does not exist: set HF_TOKEN to a token with access (and accept its terms on the Hub)",
        401 | 403 => "; the repository is gated, private or does not exist, and HF_TOKEN does not give access to it",
        404 => "; no such repository, revision or file",
        _ => "",
    };
    let detail = [code, message].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(": ");
    if detail.is_empty() {
        format!("the Hub answered HTTP {status}{hint}")
    } else {
        format!("the Hub answered HTTP {status} ({detail}){hint}")
    }
}

impl HubError {
    fn write(path: &Path, source: std::io::Error) -> HubError {
        HubError::Write { path: path.to_path_buf(), source }
    }
}

impl From<HubError> for dycoke::Error {
    fn from(e: HubError) -> dycoke::Error {
        dycoke::Error::invalid(ERROR_WHAT, e.to_string())
    }
}

/// The files a model from the Hub runs from.
#[derive(Debug)]
pub struct HubModel {
    pub llm: PathBuf,
    pub mmproj: Option<PathBuf>,
    /// The snapshot's commit.
    pub commit: String,
}

/// Whether a resolution may answer from the cache without asking the Hub.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// `-hf`: the cached model of the revision, if complete; else ask.
    CachedFirst,
    /// `dycoke pull`: ask for the revision's commit and check every file.
    Refresh,
}

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// What a repository holds, and what of it a model needs.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// A checkpoint to convert: the files to fetch, and the output type.
    Convert { files: Vec<String>, ty: GgmlType },
    /// GGUF files to run as they are.
    Gguf { llm: String, mmproj: Option<String> },
}

impl Plan {
    fn files(&self) -> Vec<String> {
        match self {
            Plan::Convert { files, .. } => files.clone(),
            Plan::Gguf { llm, mmproj } => std::iter::once(llm.clone()).chain(mmproj.clone()).collect(),
        }
    }
}

/// A file name the cache may hold: relative, without `..` or empty segments.
fn safe_name(f: &str) -> bool {
    !f.is_empty() && !f.starts_with('/') && !f.contains('\\') && f.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

fn base_name(f: &str) -> String {
    f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase()
}

/// Whether a file name holds TYPE as a whole word (`Q4_K` is not in `q4_k_m`, nor `q4_0` in `iq4_0`).
fn names_type(file: &str, ty: &str) -> bool {
    let name = base_name(file);
    let ty = ty.to_ascii_lowercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    name.match_indices(&ty).any(|(i, _)| !word(name[..i].chars().next_back()) && !word(name[i + ty.len()..].chars().next()))
}

fn list(files: &[&String]) -> String {
    if files.is_empty() {
        return "none".into();
    }
    files.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
}

/// The files a checkpoint conversion reads (`dycoke::convert`): nothing of other weight formats.
fn convert_inputs(files: &[String]) -> Vec<String> {
    let wanted = ["config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json", "model.safetensors.index.json"];
    files
        .iter()
        .filter(|f| wanted.contains(&f.as_str()) || (!f.contains('/') && f.starts_with("model") && f.ends_with(".safetensors")))
        .cloned()
        .collect()
}

fn plan(repo: &str, files: &[String], quant: Option<&str>) -> Result<Plan, HubError> {
    let files: Vec<String> = files.iter().filter(|f| safe_name(f)).cloned().collect();
    let layout_err = |problem: String| HubError::Layout { repo: repo.to_string(), problem };
    let has_weights = files.iter().any(|f| !f.contains('/') && f.starts_with("model") && f.ends_with(".safetensors"));
    let ggufs: Vec<&String> = files.iter().filter(|f| base_name(f).ends_with(".gguf")).collect();
    if files.iter().any(|f| f == "config.json") && has_weights {
        let ty = match quant {
            None => DEFAULT_CONVERT_TYPE,
            Some(q) => GgmlType::from_name(q).filter(|t| layout::TARGETS.contains(t)).ok_or_else(|| {
                layout_err(format!("unknown TYPE {q:?}: this is a transformers checkpoint, converted on first use to one of {}", layout::type_list()))
            })?,
        };
        let needed = convert_inputs(&files);
        if !needed.iter().any(|f| f == "tokenizer.json") {
            return Err(layout_err("a transformers checkpoint without tokenizer.json cannot be converted".into()));
        }
        return Ok(Plan::Convert { files: needed, ty });
    }
    if ggufs.is_empty() {
        let shown: Vec<&String> = files.iter().take(20).collect();
        let more = if files.len() > 20 { format!(" and {} more", files.len() - 20) } else { String::new() };
        return Err(layout_err(format!(
            "neither a transformers LLaVA-OneVision checkpoint (config.json and model*.safetensors) nor a GGUF repository (*.gguf); found: {}{more}",
            list(&shown)
        )));
    }
    let (mmprojs, llms): (Vec<&String>, Vec<&String>) = ggufs.into_iter().partition(|f| base_name(f).contains("mmproj"));
    if llms.is_empty() {
        return Err(layout_err(format!("only vision GGUF files (mmproj), no language model; found: {}", list(&mmprojs))));
    }
    let llm = match quant {
        Some(q) => {
            let m: Vec<&String> = llms.iter().copied().filter(|f| names_type(f, q)).collect();
            match m.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(layout_err(format!("no GGUF file of type {q}; the language models found: {}", list(&llms)))),
                _ => return Err(layout_err(format!("several GGUF files of type {q}: {}; split files are not supported", list(&m)))),
            }
        }
        None => match llms.as_slice() {
            [one] => (*one).clone(),
            _ => {
                let m: Vec<&String> = llms.iter().copied().filter(|f| names_type(f, DEFAULT_QUANT)).collect();
                match m.as_slice() {
                    [one] => (*one).clone(),
                    _ => return Err(layout_err(format!("several language models, pick one with {repo}:TYPE (for example Q4_K_M); found: {}", list(&llms)))),
                }
            }
        },
    };
    let mmproj = match mmprojs.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        _ => {
            let m: Vec<&String> = quant.map(|q| mmprojs.iter().copied().filter(|f| names_type(f, q)).collect()).unwrap_or_default();
            match m.as_slice() {
                [one] => Some((*one).clone()),
                _ => return Err(layout_err(format!("several candidate vision models (mmproj) and no one of them is of the type asked for; found: {}", list(&mmprojs)))),
            }
        }
    };
    Ok(Plan::Gguf { llm, mmproj })
}

/// The name of a plan's folder in dycoke's cache.
fn plan_key(plan: &Plan, quant: Option<&str>) -> String {
    match plan {
        Plan::Convert { ty, .. } => ty.name().to_ascii_lowercase(),
        Plan::Gguf { .. } => quant.map(str::to_ascii_lowercase).unwrap_or_else(|| "default".into()),
    }
}

const LLM_FILE: &str = "model-llm.gguf";
const MMPROJ_FILE: &str = "model-mmproj.gguf";
const PICKED_FILE: &str = "picked.json";

/// The model of `commit` for `key`, if dycoke's cache holds it whole.
fn ready(rc: &RepoCache, commit: &str, key: &str) -> Option<HubModel> {
    let dir = rc.derived(commit, key);
    let (llm, mmproj) = (dir.join(LLM_FILE), dir.join(MMPROJ_FILE));
    if llm.is_file() && mmproj.is_file() {
        return Some(HubModel { llm, mmproj: Some(mmproj), commit: commit.to_string() });
    }
    let picked: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(PICKED_FILE)).ok()?).ok()?;
    let snap = rc.snapshot(commit);
    let file = |k: &str| picked.get(k).and_then(|v| v.as_str()).filter(|f| safe_name(f)).map(|f| snap.join(f));
    let llm = file("llm").filter(|p| p.is_file())?;
    let mmproj = match picked.get("mmproj") {
        Some(serde_json::Value::Null) | None => None,
        Some(_) => Some(file("mmproj").filter(|p| p.is_file())?),
    };
    Some(HubModel { llm, mmproj, commit: commit.to_string() })
}

/// Writes `dir` whole or not at all: `fill` writes into a temporary sibling that is renamed.
fn publish(dir: &Path, fill: impl FnOnce(&Path) -> Result<(), HubError>) -> Result<(), HubError> {
    let parent = dir.parent().expect("a cache folder has a parent");
    std::fs::create_dir_all(parent).map_err(|e| HubError::write(parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = std::fs::create_dir(&tmp).map_err(|e| HubError::write(&tmp, e)).and_then(|()| fill(&tmp)).and_then(|()| {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| HubError::write(dir, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Makes the model of a plan from a snapshot holding its files.
fn finish(repo: &str, rc: &RepoCache, commit: &str, key: &str, plan: &Plan) -> Result<HubModel, HubError> {
    let dir = rc.derived(commit, key);
    match plan {
        Plan::Convert { ty, .. } => {
            eprintln!("dycoke: converting {repo} ({}) to {} GGUF, once", &commit[..12], ty.name());
            publish(&dir, |tmp| {
                let opts = ConvertOptions { input: rc.snapshot(commit), prefix: tmp.join("model"), outtype: *ty, vision_type: None };
                let mut bar = LazyBar::new("converting", 2);
                convert::convert(&opts, &mut |done, total, _| bar.update(done, total)).map_err(|source| HubError::Convert { repo: repo.to_string(), source: Box::new(source) })?;
                bar.finish();
                Ok(())
            })?;
        }
        Plan::Gguf { llm, mmproj } => {
            let picked = serde_json::json!({ "llm": llm, "mmproj": mmproj });
            publish(&dir, |tmp| {
                let p = tmp.join(PICKED_FILE);
                std::fs::write(&p, picked.to_string()).map_err(|e| HubError::write(&p, e))
            })?;
        }
    }
    ready(rc, commit, key).ok_or_else(|| HubError::Cache(format!("{}: incomplete after writing it", dir.display())))
}

/// Fetches a file of a snapshot into the cache, unless a blob with the Hub's hash is there.
fn fetch(hub: &Hub, repo: &str, rc: &RepoCache, commit: &str, file: &str) -> Result<(), HubError> {
    let meta = hub.file_meta(repo, commit, file)?;
    let blob = rc.blob(&meta.etag);
    if blob.is_file() {
        match client::verify(file, &blob, &meta) {
            Ok(()) => {
                rc.link(commit, file, &meta.etag)?;
                return Ok(());
            }
            Err(e) => {
                eprintln!("dycoke: {e}; downloading it again");
                std::fs::remove_file(&blob).map_err(|e| HubError::write(&blob, e))?;
            }
        }
    }
    let blobs = blob.parent().expect("a blob has a folder");
    std::fs::create_dir_all(blobs).map_err(|e| HubError::write(blobs, e))?;
    // huggingface_hub's own name for a partial download, so either resumes the other's.
    let partial = blobs.join(format!("{}.incomplete", meta.etag));
    hub.download(repo, file, &meta, &partial)?;
    std::fs::rename(&partial, &blob).map_err(|e| HubError::write(&blob, e))?;
    rc.link(commit, file, &meta.etag)?;
    Ok(())
}

/// The model a `REPO[:TYPE][@REV]` names, downloaded and converted as needed.
pub fn resolve(spec: &HubSpec, freshness: Freshness) -> Result<HubModel, HubError> {
    let caches = Caches::from_env()?;
    let rc = caches.repo(&spec.repo);
    let quant = spec.quant.as_deref();
    let offline = offline();
    if freshness == Freshness::CachedFirst || offline {
        if let Some(commit) = rc.commit_for(&spec.revision) {
            // The plan is made from what the snapshot holds, to know its key and its files.
            let local = rc.local_files(&commit);
            if let Ok(p) = plan(&spec.repo, &local, quant) {
                let key = plan_key(&p, quant);
                if let Some(m) = ready(&rc, &commit, &key) {
                    return Ok(m);
                }
                if offline && p.files().iter().all(|f| local.contains(f)) {
                    return finish(&spec.repo, &rc, &commit, &key, &p);
                }
            } else {
                // A converted model whose checkpoint files were removed from the cache.
                let key = quant.map_or_else(|| DEFAULT_CONVERT_TYPE.name().to_ascii_lowercase(), str::to_ascii_lowercase);
                if let Some(m) = ready(&rc, &commit, &key) {
                    return Ok(m);
                }
            }
        }
        if offline {
            return Err(HubError::Offline { repo: spec.repo.clone(), revision: spec.revision.clone() });
        }
    }
    let hub = Hub::from_env();
    let (commit, files) = hub.revision(&spec.repo, &spec.revision)?;
    let p = plan(&spec.repo, &files, quant)?;
    let key = plan_key(&p, quant);
    let converted = matches!(p, Plan::Convert { .. }) && ready(&rc, &commit, &key).is_some();
    if !converted {
        for f in p.files() {
            fetch(&hub, &spec.repo, &rc, &commit, &f)?;
        }
    }
    rc.set_ref(&spec.revision, &commit)?;
    match ready(&rc, &commit, &key) {
        Some(m) => Ok(m),
        None => finish(&spec.repo, &rc, &commit, &key, &p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn types_match_whole_words() {
        assert!(names_type("Qwen2-0.5B-Q4_K_M.gguf", "q4_k_m"));
        assert!(!names_type("Qwen2-0.5B-Q4_K_M.gguf", "q4_k"));
        assert!(!names_type("model-IQ4_NL.gguf", "q4_nl"));
        assert!(names_type("sub/mmproj-model-f16.gguf", "F16"));
    }

    #[test]
    fn plans_each_layout() {
        let hf = names(&["config.json", "model.safetensors", "tokenizer.json", "onnx/model.onnx", "pytorch_model.bin", "README.md", "processor_config.json"]);
        assert_eq!(plan("a/b", &hf, None).unwrap(), Plan::Convert { files: names(&["config.json", "model.safetensors", "tokenizer.json", "processor_config.json"]), ty: GgmlType::F16 });
        assert!(matches!(plan("a/b", &hf, Some("Q8_0")).unwrap(), Plan::Convert { ty: GgmlType::Q8_0, .. }));
        assert!(plan("a/b", &hf, Some("q4_k_m")).unwrap_err().to_string().contains("unknown TYPE"));

        let gguf = names(&["m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf"]);
        assert_eq!(plan("a/b", &gguf, None).unwrap(), Plan::Gguf { llm: "m-Q4_K_M.gguf".into(), mmproj: Some("mmproj-m-f16.gguf".into()) });
        assert_eq!(plan("a/b", &gguf, Some("Q8_0")).unwrap(), Plan::Gguf { llm: "m-Q8_0.gguf".into(), mmproj: Some("mmproj-m-f16.gguf".into()) });
        assert!(plan("a/b", &gguf, Some("q6_k")).unwrap_err().to_string().contains("m-Q4_K_M.gguf, m-Q8_0.gguf"));

        let two = names(&["m-Q8_0.gguf", "mmproj-a.gguf", "mmproj-b.gguf"]);
        assert!(plan("a/b", &two, None).unwrap_err().to_string().contains("mmproj-a.gguf, mmproj-b.gguf"));

        let neither = names(&["README.md", "pytorch_model.bin"]);
        assert!(plan("a/b", &neither, None).unwrap_err().to_string().contains("found: README.md, pytorch_model.bin"));
        assert!(plan("a/b", &names(&["../x.gguf"]), None).is_err());
    }
}
