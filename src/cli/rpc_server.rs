//! `dycoke rpc-server`: this machine's compute device served over ggml's RPC protocol, for
//! `--rpc` on another machine (or another process).

use std::path::PathBuf;

use clap::Args;
use dycoke::ggml::rpc::{self, Endpoint};
use dycoke::{Error, Setting};

const SECURITY: &str = "The RPC protocol has NO AUTHENTICATION and NO ENCRYPTION: anyone who can reach the port can run \
computations on this machine and read and write the memory it serves. Keep the default loopback address, or bind \
another address only on a network you trust (see SECURITY.md).";

#[derive(Args)]
#[command(after_help = SECURITY)]
pub struct RpcServerArgs {
    /// Address to listen on (IPv4). NO AUTHENTICATION: anything other than 127.0.0.1 exposes this
    /// machine to whoever reaches the port.
    #[arg(long, value_name = "IPV4", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, value_name = "PORT", default_value_t = rpc::DEFAULT_PORT)]
    port: u16,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long = "threads", value_name = "N")]
    threads: Option<usize>,
    /// Device to serve: `cpu`, or a GPU of a build with a GPU feature.
    #[arg(long, value_name = "NAME", default_value = "cpu")]
    device: String,
    /// Keep large tensors the clients send in this folder, so that a client loading the same
    /// weights again sends only their hashes.
    #[arg(long = "cache", value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Exit when standard input closes: a supervising process (a test, a service manager) then
    /// stops the server by closing the pipe, and the server does not outlive a supervisor that dies.
    #[arg(long)]
    exit_on_stdin_close: bool,
}

pub fn run(a: RpcServerArgs) -> dycoke::Result<()> {
    let endpoint = Endpoint::new(&a.host, a.port)?;
    if a.threads == Some(0) {
        return Err(Error::setting(Setting::Threads, "must be at least 1"));
    }
    let threads = a.threads.unwrap_or_else(dycoke::session::default_threads);
    let device = dycoke::model::find_device(Some(&a.device))?;
    if !endpoint.is_loopback() {
        eprintln!("WARNING: serving on {endpoint}, not loopback. {SECURITY}");
    }
    if a.exit_on_stdin_close {
        // ggml's server loop has no way to stop: end the process from a watcher thread.
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    Err(rpc::serve(&endpoint, a.cache.as_deref(), threads, &[device]).into())
}
