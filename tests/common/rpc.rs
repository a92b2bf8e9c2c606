//! `dycoke rpc-server` processes on free loopback ports, for the RPC tests.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RpcServer {
    child: Child,
    /// `127.0.0.1:PORT`
    pub endpoint: String,
}

impl RpcServer {
    /// Starts a server on a free port (a port the OS just gave out and released; another is tried
    /// when something else took it meanwhile) and waits until it accepts connections. The server
    /// exits when this value is dropped or the test process dies (it watches its stdin).
    pub fn start() -> RpcServer {
        RpcServer::start_under(&[])
    }

    /// `start`, with the server run by `wrapper` (a program and its arguments, such as `prlimit`
    /// with a memory limit) when it is not empty.
    pub fn start_under(wrapper: &[&str]) -> RpcServer {
        // One start at a time in this process: a port given out again before the first server
        // bound it would let two servers race for it, and the loser's check below would see the
        // winner listening.
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dycoke = env!("CARGO_BIN_EXE_dycoke");
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(dycoke);
                    c
                }
                None => Command::new(dycoke),
            };
            let mut child = command
                .args(["rpc-server", "--port", &port.to_string(), "-t", "2", "--exit-on-stdin-close"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dycoke rpc-server");
            let endpoint = format!("127.0.0.1:{port}");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: try another
                }
                // A bare connection that closes at once: the server drops it and accepts the next.
                // Then the server must still be running (a server that lost the port to another
                // process exits at once, and the connection went to that process).
                if TcpStream::connect(&endpoint).is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                    if child.try_wait().unwrap().is_none() {
                        return RpcServer { child, endpoint };
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dycoke rpc-server did not start on any of 5 free ports");
    }

    /// Stops the server at once (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.kill();
    }
}
