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
    #[arg(required_unless_present = "list_devices")]
    file: Option<PathBuf>,
    /// List the compute devices of this build (with --rpc, the servers' too), with their memory,
    /// as names --device takes.
    #[arg(long)]
    list_devices: bool,
    /// RPC servers whose devices --list-devices adds (see `run --rpc`).
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',', requires = "list_devices")]
    rpc: Vec<String>,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
    /// For a vision model: the --vision-type whose layout to show.
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    vision_type: String,
}

pub fn run(a: InfoArgs) -> dycoke::Result<()> {
    let vision_type = VisionType::parse(&a.vision_type)?;
    if a.list_devices {
        list_devices(&a.rpc)?;
    }
    let Some(path) = &a.file else { return Ok(()) };
    let file = GgufFile::open(path)?;
    let mut out = std::io::stdout().lock();
    match dycoke::gguf::describe(&file, &mut out, a.tensors) {
        // The reader stopped reading (`| head`): nothing is wrong with the file.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        r => r.map_err(|e| Error::io(path, e))?,
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

/// Prints each device as `NAME  KIND  DESCRIPTION  free/total MiB`, like llama.cpp's
/// `--list-devices`.
fn list_devices(rpc: &[String]) -> dycoke::Result<()> {
    dycoke::model::add_rpc_servers(rpc)?;
    println!("devices:");
    for d in dycoke::ggml::Device::all() {
        let (free, total) = d.memory();
        let mib = |b: usize| b / (1024 * 1024);
        println!("  {:<8} {:<14} {:<40} {} MiB free of {} MiB", d.name().to_ascii_lowercase(), format!("{:?}", d.kind()), d.description(), mib(free), mib(total));
    }
    Ok(())
}
