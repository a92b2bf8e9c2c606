//! ggml's RPC backend: serving this machine's devices to other processes, and adding the devices
//! of a remote server to this process.
//!
//! ggml's RPC client aborts the process when it cannot connect or the handshake fails, and blocks
//! without a timeout when a server accepts but never answers. So before an endpoint reaches ggml,
//! `add_server` connects itself, with a timeout, and performs the protocol's handshake (HELLO, then
//! DEVICE_COUNT): a wrong address, a refused connection, a silent server or another protocol
//! version become errors here. What cannot be guarded: a server that dies or stops answering after
//! the devices were added (ggml then aborts or waits; see README, "RPC").
//!
//! The protocol has no authentication and no encryption: whoever reaches a server's port can run
//! graphs on it and read and write its memory.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::backend::Device;
use super::sys;

/// The default port of ggml's (and llama.cpp's) `rpc-server`.
pub const DEFAULT_PORT: u16 = 50052;

/// How long `add_server` waits for a connection and for each answer of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Protocol facts from ggml-rpc.cpp: command numbers, and the size of the capability block of the
/// HELLO messages (all zero: plain TCP).
const CMD_HELLO: u8 = 14;
const CMD_DEVICE_COUNT: u8 = 15;
const CONN_CAPS_SIZE: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("bad RPC endpoint {0:?}: expected HOST:PORT with a port from 1 to 65535 (IPv4 or a host name)")]
    Endpoint(String),
    #[error("RPC server {endpoint}: cannot resolve the host to an IPv4 address{detail}")]
    Resolve { endpoint: String, detail: String },
    #[error("RPC server {endpoint}: cannot connect: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("RPC server {endpoint} did not complete the handshake within {}s (is it an RPC server? it serves one client at a time: is another one connected?): {source}", HANDSHAKE_TIMEOUT.as_secs())]
    Handshake { endpoint: String, source: std::io::Error },
    #[error("RPC server {endpoint} sent a malformed answer to {command}: is it a ggml RPC server?")]
    Protocol { endpoint: String, command: &'static str },
    #[error("RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; this build speaks {}.{}.x (use matching builds)", sys::RPC_PROTO_MAJOR_VERSION, sys::RPC_PROTO_MINOR_VERSION)]
    Version { endpoint: String, major: u8, minor: u8, patch: u8 },
    #[error("RPC server {endpoint} has no devices")]
    NoDevices { endpoint: String },
    #[error("cannot serve RPC on {endpoint}: {problem}")]
    Serve { endpoint: String, problem: String },
}

/// A `HOST:PORT` an RPC server listens on or a client connects to, checked as ggml parses it
/// (ggml splits at the first `:`, so IPv6 literals are not supported).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn new(host: &str, port: u16) -> Result<Endpoint, RpcError> {
        let ok = port != 0
            && !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
        if ok {
            Ok(Endpoint { host: host.to_string(), port })
        } else {
            Err(RpcError::Endpoint(format!("{host}:{port}")))
        }
    }

    /// Parses `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Endpoint, RpcError> {
        let bad = || RpcError::Endpoint(s.to_string());
        let (host, port) = s.trim().split_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        Endpoint::new(host, port).map_err(|_| bad())
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host is a loopback address (`localhost` counts).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost") || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn c_string(&self) -> CString {
        // The characters were checked in `new`: no NUL.
        CString::new(self.to_string()).expect("endpoint without NUL")
    }

    /// The IPv4 addresses of the host, as ggml's client resolves it.
    fn resolve(&self) -> Result<Vec<SocketAddr>, RpcError> {
        let fail = |detail: String| RpcError::Resolve { endpoint: self.to_string(), detail };
        let addrs = (self.host.as_str(), self.port).to_socket_addrs().map_err(|e| fail(format!(": {e}")))?;
        let v4: Vec<SocketAddr> = addrs.filter(SocketAddr::is_ipv4).collect();
        if v4.is_empty() {
            return Err(fail(String::new()));
        }
        Ok(v4)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Devices already added, by endpoint: ggml keeps one registry per endpoint, and a device must be
/// registered with ggml's device list once.
static ADDED: Mutex<Option<HashMap<Endpoint, Vec<Device>>>> = Mutex::new(None);

/// Adds the devices of the RPC server at `endpoint` to this process's devices (`Device::all`),
/// after checking that it answers the protocol's handshake in time. Adding the same endpoint again
/// returns the same devices. ggml names them `RPC0`, `RPC1`, ... in the order they are added; each
/// device's description is its endpoint.
pub fn add_server(endpoint: &Endpoint) -> Result<Vec<Device>, RpcError> {
    super::init();
    let mut added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    let added = added.get_or_insert_with(HashMap::new);
    if let Some(devices) = added.get(endpoint) {
        return Ok(devices.clone());
    }
    if probe(endpoint)? == 0 {
        return Err(RpcError::NoDevices { endpoint: endpoint.to_string() });
    }
    let name = endpoint.c_string();
    // SAFETY: a NUL-terminated endpoint that just completed the handshake (so ggml's connection
    // does not hit its abort on a refused connection); ggml copies the string.
    let reg = unsafe { sys::ggml_backend_rpc_add_server(name.as_ptr()) };
    if reg.is_null() {
        return Err(RpcError::NoDevices { endpoint: endpoint.to_string() });
    }
    // SAFETY: a valid registry; indices below its count are valid devices, which live as long as
    // the process (ggml never frees RPC registries); each is registered once (guarded by ADDED).
    let devices: Vec<Device> = unsafe {
        (0..sys::ggml_backend_reg_dev_count(reg))
            .map(|i| {
                let dev = sys::ggml_backend_reg_dev_get(reg, i);
                sys::ggml_backend_device_register(dev);
                Device::from_raw(dev)
            })
            .collect()
    };
    added.insert(endpoint.clone(), devices.clone());
    Ok(devices)
}

/// Connects to `endpoint`, performs HELLO and asks for the device count, with `HANDSHAKE_TIMEOUT`
/// on every step. The server serves one client at a time: this connection is closed before ggml
/// opens its own.
fn probe(endpoint: &Endpoint) -> Result<u32, RpcError> {
    let name = endpoint.to_string();
    let mut last = None;
    let mut stream = None;
    for addr in endpoint.resolve()? {
        match TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| RpcError::Connect {
        endpoint: name.clone(),
        source: last.unwrap_or_else(|| std::io::Error::other("no address")),
    })?;
    let io = |source: std::io::Error| RpcError::Handshake { endpoint: name.clone(), source };
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;

    let hello = request(&mut stream, CMD_HELLO, &[0u8; CONN_CAPS_SIZE]).map_err(io)?;
    // major, minor, patch, padding, then the server's capabilities.
    if hello.len() != 4 + CONN_CAPS_SIZE {
        return Err(RpcError::Protocol { endpoint: name, command: "HELLO" });
    }
    let (major, minor, patch) = (hello[0], hello[1], hello[2]);
    if major != sys::RPC_PROTO_MAJOR_VERSION || minor > sys::RPC_PROTO_MINOR_VERSION {
        return Err(RpcError::Version { endpoint: name, major, minor, patch });
    }
    let count = request(&mut stream, CMD_DEVICE_COUNT, &[]).map_err(io)?;
    let count: [u8; 4] = count.try_into().map_err(|_| RpcError::Protocol { endpoint: name, command: "DEVICE_COUNT" })?;
    Ok(u32::from_le_bytes(count))
}

/// One request of the protocol: command byte, payload size (u64, little-endian as ggml writes it on
/// the machines it supports), payload; the answer is a size and that many bytes (at most 64 here).
fn request(stream: &mut TcpStream, cmd: u8, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut msg = Vec::with_capacity(9 + payload.len());
    msg.push(cmd);
    msg.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    msg.extend_from_slice(payload);
    stream.write_all(&msg)?;
    let mut size = [0u8; 8];
    stream.read_exact(&mut size)?;
    let size = u64::from_le_bytes(size);
    if size > 64 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("an answer of {size} bytes")));
    }
    let mut answer = vec![0u8; size as usize];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// Serves `devices` over ggml's RPC protocol on `endpoint`, one client at a time, with `n_threads`
/// CPU threads and, with `cache_dir`, a local cache of large tensors the clients send. Returns only
/// when serving fails (the address cannot be bound, a socket call fails).
pub fn serve(endpoint: &Endpoint, cache_dir: Option<&Path>, n_threads: usize, devices: &[Device]) -> RpcError {
    let fail = |problem: String| RpcError::Serve { endpoint: endpoint.to_string(), problem };
    // ggml's server takes a numeric IPv4 address and reports a failed bind only as a line on stderr.
    let Ok(ip) = endpoint.host().parse::<Ipv4Addr>() else {
        return fail("the host must be an IPv4 address such as 127.0.0.1 or 0.0.0.0".into());
    };
    if devices.is_empty() {
        return fail("no device to serve".into());
    }
    if let Err(e) = TcpListener::bind((ip, endpoint.port())) {
        return fail(e.to_string());
    }
    let cache = match cache_dir {
        None => None,
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                return fail(format!("cache directory {}: {e}", dir.display()));
            }
            match dir.to_str().map(CString::new) {
                Some(Ok(c)) => Some(c),
                _ => return fail(format!("cache directory {}: the path must be UTF-8 without NUL", dir.display())),
            }
        }
    };
    super::init();
    let name = endpoint.c_string();
    let mut raw: Vec<sys::ggml_backend_dev_t> = devices.iter().map(|d| d.as_raw()).collect();
    // SAFETY: NUL-terminated strings and a device array that outlive the call (it only returns on
    // failure); the devices are valid registry entries.
    unsafe {
        sys::ggml_backend_rpc_start_server(
            name.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            n_threads.max(1),
            raw.len(),
            raw.as_mut_ptr(),
        )
    };
    fail("the server stopped (see the messages above)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let e = Endpoint::parse("127.0.0.1:50052").unwrap();
        assert_eq!((e.host(), e.port()), ("127.0.0.1", 50052));
        assert!(e.is_loopback());
        assert!(Endpoint::parse("localhost:1").unwrap().is_loopback());
        assert!(!Endpoint::parse("10.0.0.2:50052").unwrap().is_loopback());
        for bad in ["", "127.0.0.1", "127.0.0.1:", ":50052", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1", "::1:50052", "a b:1", "h:1:2"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_refused_connection_is_an_error() {
        // A port just released: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = add_server(&Endpoint::new("127.0.0.1", port).unwrap()).unwrap_err();
        assert!(matches!(e, RpcError::Connect { .. }), "{e}");
    }

    #[test]
    fn a_silent_server_times_out() {
        // Accepts (the kernel's backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let start = std::time::Instant::now();
        let e = add_server(&Endpoint::new("127.0.0.1", port).unwrap()).unwrap_err();
        assert!(matches!(e, RpcError::Handshake { .. }), "{e}");
        assert!(start.elapsed() < HANDSHAKE_TIMEOUT * 3);
    }

    #[test]
    fn another_protocol_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 9 + CONN_CAPS_SIZE];
            s.read_exact(&mut req).unwrap();
            assert_eq!(req[0], CMD_HELLO);
            let mut answer = (4 + CONN_CAPS_SIZE as u64).to_le_bytes().to_vec();
            answer.extend_from_slice(&[sys::RPC_PROTO_MAJOR_VERSION + 1, 0, 0, 0]);
            answer.extend_from_slice(&[0u8; CONN_CAPS_SIZE]);
            s.write_all(&answer).unwrap();
        });
        let e = add_server(&Endpoint::new("127.0.0.1", port).unwrap()).unwrap_err();
        assert!(matches!(e, RpcError::Version { .. }), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn serving_checks_its_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = serve(&Endpoint::new("127.0.0.1", port).unwrap(), None, 1, &[Device::cpu()]);
        assert!(matches!(e, RpcError::Serve { .. }), "{e}");
        let e = serve(&Endpoint::new("localhost", port).unwrap(), None, 1, &[Device::cpu()]);
        assert!(e.to_string().contains("IPv4"), "{e}");
    }
}
