//! `dycoke info`: what a GGUF file holds.

use std::path::PathBuf;

use clap::Args;
use dycoke::gguf::GgufFile;
use dycoke::llm::qwen2::Qwen2Params;
use dycoke::vision::layout;
use dycoke::{Error, VisionType};

#[derive(Args)]
pub struct InfoArgs {
    /// The GGUF file.
    file: PathBuf,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
    /// For a vision model: the --vision-type whose layout to show.
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    vision_type: String,
}

pub fn run(a: InfoArgs) -> dycoke::Result<()> {
    let vision_type = VisionType::parse(&a.vision_type)?;
    let file = GgufFile::open(&a.file)?;
    let mut out = std::io::stdout().lock();
    match dycoke::gguf::describe(&file, &mut out, a.tensors) {
        // The reader stopped reading (`| head`): nothing is wrong with the file.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        r => r.map_err(|e| Error::io(&a.file, e))?,
    }
    if file.get_str(dycoke::gguf::names::general::ARCHITECTURE)? == Some(dycoke::llm::qwen2::ARCH) {
        let p = Qwen2Params::from_gguf(&file)?;
        println!(
            "qwen2:      {} layers, hidden {}, {} heads ({} KV) of {}, FFN {}, vocabulary {}, context {}, RoPE base {}",
            p.n_layer, p.n_embd, p.n_head, p.n_head_kv, p.head_dim, p.n_ff, p.n_vocab, p.n_ctx_train, p.rope_freq_base
        );
    }
    if file.get_str(dycoke::gguf::names::general::ARCHITECTURE)? == Some(dycoke::gguf::names::clip::ARCH) {
        // What a load would do with the matrices on this CPU (repacking is decided at load).
        println!("vision weights: {}", layout::describe(vision_type, &layout::plan(&file, vision_type)));
    }
    println!("ggml CPU:   {}", dycoke::ggml::cpu_features_line());
    Ok(())
}
