//! Starting zpxe and the tools the tests drive.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The zpxe binary under test.
pub fn zpxe_bin() -> PathBuf {
    std::env::var_os("ZPXE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zpxe")))
}

/// Fails the test when a tool it needs is missing: the suite installs its tools
/// (tests/run-all.sh), it never skips.
pub fn require(tool: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("this test needs `{tool}`: run tests/run-all.sh, which installs it")
    })
}

/// A UDP port free right now on loopback.
pub fn free_udp_port() -> u16 {
    unique_port(|| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    })
}

/// A TCP port free right now on loopback.
pub fn free_tcp_port() -> u16 {
    unique_port(|| {
        let s = TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    })
}

/// A port from `pick` that no earlier call in this test process handed out: the kernel may give
/// a released port again at once, and two servers (or HTTPS and the web service of one) were
/// then told to bind the same port.
fn unique_port(pick: impl Fn() -> u16) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = pick();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Free ports for TFTP, proxyDHCP, PXE (4011), HTTP and the web service, in that order.
fn free_ports() -> [u16; 5] {
    [
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
        free_tcp_port(),
        free_tcp_port(),
    ]
}

/// Debian's Wine loader for 64-bit Windows programs (package wine64).
pub const WINE: &str = "/usr/lib/wine/wine64";

/// A Linux path as a program under Wine names it: Wine maps `/` to drive Z:.
pub fn wine_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// How a test server is started.
#[derive(Clone, Copy)]
enum Program<'a> {
    Native,
    InNamespace(&'a str),
    /// The Windows build under Wine.
    Wine {
        exe: &'a Path,
        prefix: &'a Path,
    },
}

/// A running zpxe, stopped (by its PID) when dropped.
pub struct Server {
    child: Child,
    pub tftp: SocketAddr,
    pub http: SocketAddr,
    pub web: SocketAddr,
    pub dhcp: SocketAddr,
    pub pxe: SocketAddr,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    /// The SQLite file this server records boots in (its own, in a temporary directory,
    /// unless the test chose `--database-url` or `--no-database`).
    pub db_path: PathBuf,
    _db_dir: tempfile::TempDir,
}

impl Server {
    /// Starts `zpxe serve` on 127.0.0.1 with free ports, serving `root`, plus `extra` flags.
    pub fn start(root: &Path, extra: &[&str]) -> Server {
        Self::start_on("127.0.0.1", root, extra)
    }

    pub fn start_on(ip: &str, root: &Path, extra: &[&str]) -> Server {
        Self::launch(Program::Native, ip, free_ports(), root, extra)
    }

    /// Starts the Windows build (`exe`) under Wine in `prefix`, on 127.0.0.1 with free ports.
    /// `root` is passed as Wine names it ([`wine_path`]); paths in `extra` must be too.
    pub fn start_windows(exe: &Path, prefix: &Path, root: &Path, extra: &[&str]) -> Server {
        let program = Program::Wine { exe, prefix };
        Self::launch(program, "127.0.0.1", free_ports(), root, extra)
    }

    /// Starts zpxe inside network namespace `ns` on the standard ports, listening on `ip`
    /// (or on every address when `ip` is 0.0.0.0).
    pub fn start_in_ns(ns: &str, ip: &str, root: &Path, extra: &[&str]) -> Server {
        Self::start_in_ns_logging(ns, ip, root, extra, "info")
    }

    /// Like [`Server::start_in_ns`], with `RUST_LOG` set to `filter` (e.g.
    /// `info,zpxe::serve::http=debug` to log every HTTP request).
    pub fn start_in_ns_logging(
        ns: &str,
        ip: &str,
        root: &Path,
        extra: &[&str],
        filter: &str,
    ) -> Server {
        Self::launch_logging(
            Program::InNamespace(ns),
            ip,
            [69, 67, 4011, 8050, 8051],
            root,
            extra,
            filter,
        )
    }

    fn launch(
        program: Program<'_>,
        ip: &str,
        ports: [u16; 5],
        root: &Path,
        extra: &[&str],
    ) -> Server {
        Self::launch_logging(program, ip, ports, root, extra, "info")
    }

    fn launch_logging(
        program: Program<'_>,
        ip: &str,
        ports: [u16; 5],
        root: &Path,
        extra: &[&str],
        filter: &str,
    ) -> Server {
        let [tftp, dhcp, pxe, http, web] = ports;
        let mut root_arg = root.as_os_str().to_owned();
        // Never the system's /var/lib/zpxe: each server records in a database of its own.
        let db_dir = tempfile::tempdir().expect("database dir");
        let db_path = db_dir.path().join("zpxe.db");
        let mut db_url = format!("sqlite://{}", db_path.display());
        let mut cmd = match program {
            Program::InNamespace(ns) => {
                let mut c = Command::new(require("ip"));
                c.args(["netns", "exec", ns]).arg(zpxe_bin());
                c
            }
            Program::Native => Command::new(zpxe_bin()),
            Program::Wine { exe, prefix } => {
                let mut c = Command::new(WINE);
                c.arg(exe)
                    .env("WINEPREFIX", prefix)
                    .env("WINEDEBUG", "-all");
                root_arg = wine_path(root).into();
                db_url = format!("sqlite:///{}", wine_path(&db_path));
                c
            }
        };
        // Wine starts its server and libraries first: seconds, not milliseconds.
        let ready_within = match program {
            Program::Wine { .. } => Duration::from_secs(60),
            _ => Duration::from_secs(20),
        };
        cmd.arg("serve")
            .arg("--root")
            .arg(root_arg)
            .args(["--listen", ip])
            .args(["--tftp-port", &tftp.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--web-port", &web.to_string()])
            .args(["--dhcp-port", &dhcp.to_string()])
            .args(["--pxe-port", &pxe.to_string()]);
        if !extra
            .iter()
            .any(|a| a.starts_with("--database-url") || *a == "--no-database")
        {
            cmd.args(["--database-url", &db_url]);
        }
        // Never the system's /etc/zpxe/zpxe.toml (zpxe's default when no --config is given,
        // present while zpxe's package is installed): an empty file of the test's own.
        if !extra.iter().any(|a| *a == "--config" || *a == "-c") {
            let config = db_dir.path().join("empty.toml");
            std::fs::write(&config, "").expect("empty config");
            match program {
                Program::Wine { .. } => cmd.arg("--config").arg(wine_path(&config)),
                _ => cmd.arg("--config").arg(&config),
            };
        }
        cmd.args(extra)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn zpxe");
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let addr = |p: u16| SocketAddr::new(ip.parse().expect("ip"), p);
        let mut server = Server {
            child,
            tftp: addr(tftp),
            http: addr(http),
            web: addr(web),
            dhcp: addr(dhcp),
            pxe: addr(pxe),
            log: rx,
            lines: Vec::new(),
            db_path,
            _db_dir: db_dir,
        };
        server.wait_for_log("zpxe ready", ready_within);
        server
    }

    /// Waits until a log line contains `needle`; panics with the log so far if it does not.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.lines.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "zpxe exited ({status}) before logging {needle:?}:\n{}",
                            self.lines.join("\n")
                        );
                    }
                    panic!(
                        "zpxe did not log {needle:?} within {within:?}:\n{}",
                        self.lines.join("\n")
                    );
                }
            }
        }
    }

    /// Collects the log lines written so far.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        &self.lines
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server now (by its PID), keeping the log written so far.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.drain_log();
    }

    /// Sends SIGTERM (zpxe drains).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT: Ctrl-C at a terminal, which Wine hands to a Windows program as its
    /// console's Ctrl-C event (zpxe drains either way).
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `within` for the process to exit by itself; its status, and the log.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                self.drain_log();
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                self.drain_log();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's anonymous resident memory (RssAnon) in KiB.
    pub fn rss_anon_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `len` bytes of a deterministic pattern to `path` and returns them.
pub fn pattern_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, &data).expect("write");
    data
}

/// What curl (`-sS`, 60 s at most) printed for `args`; fails the test if curl failed.
pub fn curl_bytes(args: &[&str]) -> Vec<u8> {
    let out = Command::new(require("curl"))
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The value of counter `zpxe_<name>` on the server's `/metrics` (0 when it is not there).
pub fn counter(server: &Server, name: &str) -> u64 {
    let body = curl_bytes(&[&format!("http://{}/metrics", server.web)]);
    let text = String::from_utf8_lossy(&body);
    let line = format!("zpxe_{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs a command with a time limit; returns (success, stdout+stderr).
pub fn run(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                return (
                    false,
                    format!(
                        "timed out after {limit:?}\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A relay's socket: at the relay's address on the server's DHCP port, where the server sends
/// relayed replies (RFC 2131 section 4.1). With SO_REUSEADDR and SO_REUSEPORT, as relays and
/// zpxe's own sockets bind: another test's socket that holds the port on every address with
/// those options (the loadgen's client port, a DHCP server's listener) then does not make this
/// bind fail with "address in use", which it did in CI. A holder without them may let go
/// within moments, so the bind is tried for up to 2 s.
pub fn relay_socket(addr: SocketAddr) -> UdpSocket {
    use socket2::{Domain, Socket, Type};
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        #[cfg(unix)]
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        // Room for a burst of replies the test reads only after sending (hook.rs sprays 300
        // DISCOVERs): the default 208 KiB held 184 offers when the test thread was slow to read.
        // Best effort: the kernel caps it at net.core.rmem_max.
        let _ = socket.set_recv_buffer_size(4 << 20);
        match socket.bind(&addr.into()) {
            Ok(()) => return socket.into(),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("relay socket at {addr}: {e}"),
        }
    }
}
