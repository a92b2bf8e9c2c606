//! ggml's RPC backend (ggml-rpc.h), which the pinned crate builds and links when `GGML_RPC=ON`
//! (set in .cargo/config.toml) but does not put in its generated bindings. Declared by hand from
//! that header; keep in step with it when the pinned crate changes.

use std::ffi::c_char;

use llama_cpp_sys_2::{ggml_backend_dev_t, ggml_backend_reg_t};

/// The protocol version this build speaks (RPC_PROTO_MAJOR_VERSION and RPC_PROTO_MINOR_VERSION):
/// a server answers its major, which must be equal, and its minor, which must not be newer.
pub const RPC_PROTO_MAJOR_VERSION: u8 = 7;
pub const RPC_PROTO_MINOR_VERSION: u8 = 0;

extern "C" {
    /// Serves `devices` on `endpoint` ("host:port") until a socket call fails; never returns otherwise.
    pub fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut ggml_backend_dev_t,
    );

    /// Connects to the server at `endpoint` and returns a registry of its devices (null when it has
    /// none). Aborts the process when the connection or the handshake fails.
    pub fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> ggml_backend_reg_t;
}
