//! Servers under test: zpxe and the peers found on this machine, each started on loopback with
//! its own configuration and pid files in the run's temporary directory. Nothing is installed.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running server process.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub child: Child,
    pub tftp_port: Option<u16>,
    pub http_port: Option<u16>,
    pub dhcp_port: Option<u16>,
    pub pxe_port: Option<u16>,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after a second; by PID only.
    pub fn stop(mut self) {
        // SAFETY: plain kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_udp() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

pub fn free_tcp() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The first of `names` on PATH (plus /usr/sbin and /sbin, which a non-root PATH may lack).
pub fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = path
        .split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .collect();
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

/// atftpd: `--atftpd PATH`, `$ZPXE_BENCH_ATFTPD`, PATH, or the unpacked .deb the README's
/// command leaves in `~/.cache/zpxe-bench/atftpd`.
pub fn find_atftpd(given: Option<&Path>) -> Option<PathBuf> {
    let env = std::env::var_os("ZPXE_BENCH_ATFTPD").map(PathBuf::from);
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/zpxe-bench/atftpd/usr/sbin/atftpd"));
    let candidates = [given.map(Path::to_path_buf), env];
    for c in candidates.into_iter().flatten() {
        // A directory is the root of an unpacked .deb.
        let c = if c.is_dir() {
            c.join("usr/sbin/atftpd")
        } else {
            c
        };
        if c.is_file() {
            return Some(c);
        }
    }
    which(&["atftpd"]).or(cache.filter(|c| c.is_file()))
}

pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let err = fs::File::create(log)?;
    let out = err.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// Waits until a UDP or TCP port answers (TCP: accepts; UDP: something is bound to it).
pub(crate) fn wait_port(child: &mut Child, port: u16, tcp: bool, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "exited at start ({status}): {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        let up = if tcp {
            TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_millis(100),
            )
            .is_ok()
        } else {
            // Bound by someone else when we cannot bind it ourselves.
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err()
        };
        if up {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("port {port} never opened");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// zpxe with every service, on free ports, with a menu that boots the storm's WinPE set.
pub fn start_zpxe(bin: &Path, root: &Path, dir: &Path) -> anyhow::Result<Server> {
    let (tftp, http, dhcp, pxe, web) = (
        free_udp()?,
        free_tcp()?,
        free_udp()?,
        free_udp()?,
        free_tcp()?,
    );
    let config = dir.join("zpxe.toml");
    fs::write(
        &config,
        format!(
            "[server]\nroot = {root:?}\nlisten = [\"127.0.0.1\"]\n\n\
             [menu]\ntitle = \"bench\"\ntimeout-ms = 1000\ndefault = \"winpe\"\n\n\
             [[menu.entries]]\nid = \"winpe\"\nlabel = \"WinPE\"\n\
             kind = {{ type = \"winpe\", wimboot = \"wimboot\", bcd = \"Boot/BCD\", \
             boot-sdi = \"Boot/boot.sdi\", boot-wim = \"sources/boot.wim\" }}\n",
        ),
    )?;
    let log = dir.join("zpxe.log");
    let mut child = spawn(
        Command::new(bin)
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--tftp-port", &tftp.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--dhcp-port", &dhcp.to_string()])
            .args(["--pxe-port", &pxe.to_string()])
            .args(["--web-port", &web.to_string()])
            // The bench's own database, never the system's /var/lib/zpxe.
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("zpxe.db").display())),
        &log,
    )?;
    wait_port(&mut child, http, true, &log).context("zpxe")?;
    wait_port(&mut child, tftp, false, &log).context("zpxe")?;
    Ok(Server {
        name: "zpxe".into(),
        child,
        tftp_port: Some(tftp),
        http_port: Some(http),
        dhcp_port: Some(dhcp),
        pxe_port: Some(pxe),
    })
}

pub fn start_tftpd_hpa(bin: &Path, root: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = free_udp()?;
    let log = dir.join("tftpd-hpa.log");
    let mut child = spawn(
        Command::new(bin)
            .args(["-L", "-s"])
            .arg(root)
            .args(["-a", &format!("127.0.0.1:{port}")])
            .args(["-P", &dir.join("tftpd-hpa.pid").to_string_lossy()]),
        &log,
    )?;
    wait_port(&mut child, port, false, &log).context("tftpd-hpa")?;
    Ok(tftp_only("tftpd-hpa", child, port))
}

pub fn start_atftpd(bin: &Path, root: &Path, dir: &Path, max: usize) -> anyhow::Result<Server> {
    let port = free_udp()?;
    let log = dir.join("atftpd.log");
    let mut child = spawn(
        Command::new(bin)
            .args(["--daemon", "--no-fork", "--bind-address", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--maxthread", &max.to_string()])
            .args(["--logfile", "/dev/null", "--pidfile"])
            .arg(dir.join("atftpd.pid"))
            .arg(root),
        &log,
    )?;
    wait_port(&mut child, port, false, &log).context("atftpd")?;
    Ok(tftp_only("atftpd", child, port))
}

fn tftp_only(name: &str, child: Child, port: u16) -> Server {
    Server {
        name: name.into(),
        child,
        tftp_port: Some(port),
        http_port: None,
        dhcp_port: None,
        pxe_port: None,
    }
}

/// dnsmasq as a TFTP server (port 69: dnsmasq's TFTP port is fixed).
pub fn start_dnsmasq_tftp(
    bin: &Path,
    root: &Path,
    dir: &Path,
    max: usize,
) -> anyhow::Result<Server> {
    let log = dir.join("dnsmasq-tftp.log");
    let mut child = spawn(
        Command::new(bin)
            .args([
                "-k",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
            ])
            .args(["--listen-address=127.0.0.1", "--enable-tftp"])
            .arg(format!("--tftp-root={}", root.display()))
            .arg(format!("--tftp-max={max}"))
            .arg("-x")
            .arg(dir.join("dnsmasq-tftp.pid"))
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq-tftp.syslog").display()
            )),
        &log,
    )?;
    wait_port(&mut child, 69, false, &log).context("dnsmasq TFTP on 127.0.0.1:69")?;
    Ok(tftp_only("dnsmasq", child, 69))
}

/// The PXE menu both dnsmasq set-ups offer: client system architecture (dnsmasq's names for
/// option 93) and the loader for it, the same files zpxe's policy names.
const DNSMASQ_LOADERS: [(&str, &str); 5] = [
    ("x86PC", "undionly.kpxe"),
    ("X86-64_EFI", "ipxe.efi"),
    ("BC_EFI", "ipxe.efi"),
    ("IA32_EFI", "ipxe.efi"),
    ("ARM64_EFI", "ipxe-arm64.efi"),
];

/// dnsmasq in proxyDHCP mode on an alternate DHCP port (relays answered on that port) and
/// 4011, naming `boot_file` by architecture as a PXE service.
pub fn start_dnsmasq_proxy(bin: &Path, dir: &Path) -> anyhow::Result<Server> {
    let dhcp = free_udp()?;
    let mut conf = String::new();
    let _ = writeln!(conf, "port=0\nlisten-address=127.0.0.1\nbind-interfaces");
    let _ = writeln!(conf, "dhcp-range=127.0.0.0,proxy,255.0.0.0");
    let _ = writeln!(conf, "dhcp-alternate-port={dhcp}");
    let _ = writeln!(conf, "pxe-prompt=\"zpxe-bench\",0");
    for (csa, file) in DNSMASQ_LOADERS {
        let _ = writeln!(conf, "pxe-service={csa},\"boot\",{file},127.0.0.1");
    }
    let _ = writeln!(
        conf,
        "log-facility={}",
        dir.join("dnsmasq-dhcp.syslog").display()
    );
    let path = dir.join("dnsmasq-dhcp.conf");
    fs::write(&path, conf)?;
    let log = dir.join("dnsmasq-dhcp.log");
    let mut child = spawn(
        Command::new(bin)
            .arg("-k")
            .arg(format!("--conf-file={}", path.display()))
            .arg("-x")
            .arg(dir.join("dnsmasq-dhcp.pid")),
        &log,
    )?;
    wait_port(&mut child, dhcp, false, &log).context("dnsmasq proxyDHCP")?;
    Ok(Server {
        name: "dnsmasq".into(),
        child,
        tftp_port: None,
        http_port: None,
        dhcp_port: Some(dhcp),
        pxe_port: Some(4011),
    })
}

/// nginx with sendfile, its own prefix, pid and logs under `dir`.
pub fn start_nginx(bin: &Path, root: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = free_tcp()?;
    let prefix = dir.join("nginx");
    fs::create_dir_all(prefix.join("logs"))?;
    let p = prefix.display();
    let conf = format!(
        "worker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  sendfile on; tcp_nopush on; access_log off;\n\
         default_type application/octet-stream; keepalive_requests 100000;\n\
         client_body_temp_path {p}/cb; proxy_temp_path {p}/px; fastcgi_temp_path {p}/fc;\n\
         uwsgi_temp_path {p}/uw; scgi_temp_path {p}/sc;\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        root = root.display()
    );
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let log = dir.join("nginx.log");
    let mut child = spawn(
        Command::new(bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]),
        &log,
    )?;
    wait_port(&mut child, port, true, &log).context("nginx")?;
    Ok(Server {
        name: "nginx".into(),
        child,
        tftp_port: None,
        http_port: Some(port),
        dhcp_port: None,
        pxe_port: None,
    })
}

/// Whether a socket in `pid`'s network namespace is bound to UDP `port` or listens on TCP
/// `port` (from /proc/PID/net, which shows the namespace of that process).
fn bound_in_ns(pid: u32, port: u16, tcp: bool) -> bool {
    let file = if tcp { "tcp" } else { "udp" };
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
        return false;
    };
    let port = format!(":{port:04X}");
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address, rem_address, st: TCP LISTEN is 0A, an unconnected UDP socket 07.
        f.len() > 3 && f[1].ends_with(&port) && f[3] == if tcp { "0A" } else { "07" }
    })
}

fn wait_in_ns(child: &mut Child, ports: &[(u16, bool)], log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "exited at start ({status}): {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        if ports
            .iter()
            .all(|(port, tcp)| bound_in_ns(child.id(), *port, *tcp))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ports {ports:?} never opened");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ports every stack in a storm namespace uses: the well-known ones, HTTP on 8080.
pub const NS_DHCP: u16 = 67;
pub const NS_PXE: u16 = 4011;
pub const NS_TFTP: u16 = 69;
pub const NS_HTTP: u16 = 8080;

/// A network boot stack running inside a namespace: one process (zpxe) or several (the
/// classic stack), each with its log, stopped by PID.
#[derive(Debug)]
pub struct Stack {
    pub name: String,
    pub parts: Vec<(Server, PathBuf)>,
}

impl Stack {
    pub fn pids(&self) -> Vec<u32> {
        self.parts.iter().map(|(s, _)| s.pid()).collect()
    }

    /// The processes that are no longer running, with the end of their logs.
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (server, log) in &mut self.parts {
            if let Ok(Some(status)) = server.child.try_wait() {
                let text = fs::read_to_string(&*log).unwrap_or_default();
                let tail = text.lines().rev().find(|l| !l.trim().is_empty());
                out.push(format!(
                    "{} exited during the storm ({status}): {}",
                    server.name,
                    tail.unwrap_or("no log").trim()
                ));
            }
        }
        out
    }

    pub fn stop(self) {
        for (server, _) in self.parts {
            server.stop();
        }
    }
}

/// A process of a stack; the ports are the stack's (`NS_*`).
fn plain(name: &str, child: Child) -> Server {
    Server {
        name: name.into(),
        child,
        tftp_port: None,
        http_port: None,
        dhcp_port: None,
        pxe_port: None,
    }
}

fn ns_server(name: &str, child: Child) -> Server {
    Server {
        name: name.into(),
        child,
        tftp_port: Some(NS_TFTP),
        http_port: Some(NS_HTTP),
        dhcp_port: Some(NS_DHCP),
        pxe_port: Some(NS_PXE),
    }
}

/// zpxe inside namespace `ns` on every address (broadcast DHCP needs the wildcard), with the
/// same menu as [`start_zpxe`]. Every virtual client of a storm comes from the client
/// namespace's one address, so the per-address TFTP cap (8 by default, a guard against one
/// misbehaving host) is raised to the global one; real machines each have their own address,
/// and the classic peers have no such cap. With `inventory`, zpxe records the storm in its own
/// SQLite file (its default); without, it runs with `--no-database`.
pub fn start_zpxe_in(
    bin: &Path,
    root: &Path,
    dir: &Path,
    ns: &str,
    inventory: bool,
) -> anyhow::Result<Stack> {
    let config = dir.join("zpxe-ns.toml");
    fs::write(
        &config,
        format!(
            "[server]\nroot = {root:?}\nlisten = [\"0.0.0.0\"]\n\n\
             [tftp]\nmax-transfers-per-client = 4096\n\n\
             [menu]\ntitle = \"bench\"\ntimeout-ms = 1000\ndefault = \"winpe\"\n\n\
             [[menu.entries]]\nid = \"winpe\"\nlabel = \"WinPE\"\n\
             kind = {{ type = \"winpe\", wimboot = \"wimboot\", bcd = \"Boot/BCD\", \
             boot-sdi = \"Boot/boot.sdi\", boot-wim = \"sources/boot.wim\" }}\n",
        ),
    )?;
    let log = dir.join("zpxe-ns.log");
    let mut child = spawn(
        crate::netns::NetPair::command(ns, bin)
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--tftp-port", &NS_TFTP.to_string()])
            .args(["--http-port", &NS_HTTP.to_string()])
            .args(["--dhcp-port", &NS_DHCP.to_string()])
            .args(["--pxe-port", &NS_PXE.to_string()])
            .args(["--web-port", "8081"])
            // The bench's own database (a fresh file), never the system's /var/lib/zpxe.
            .args(if inventory {
                let db = dir.join("zpxe-ns.db");
                for f in ["zpxe-ns.db", "zpxe-ns.db-wal", "zpxe-ns.db-shm"] {
                    let _ = fs::remove_file(dir.join(f));
                }
                vec![
                    "--database-url".to_owned(),
                    format!("sqlite://{}", db.display()),
                ]
            } else {
                vec!["--no-database".to_owned()]
            }),
        &log,
    )?;
    let ports = [
        (NS_DHCP, false),
        (NS_PXE, false),
        (NS_TFTP, false),
        (NS_HTTP, true),
    ];
    wait_in_ns(&mut child, &ports, &log).context("zpxe in its namespace")?;
    Ok(Stack {
        name: "zpxe".into(),
        parts: vec![(ns_server("zpxe", child), log)],
    })
}

/// The TFTP server of the classic stack.
#[derive(Debug, Clone)]
pub enum ClassicTftp {
    /// atftpd and its `--maxthread`.
    Atftpd(PathBuf, usize),
    /// tftpd-hpa's in.tftpd (one process per transfer).
    TftpdHpa(PathBuf),
}

/// What an admin assembles from packages, inside namespace `ns` on `ip`: dnsmasq in proxyDHCP
/// mode (a PXE menu per architecture, iPXE tagged by user class and sent the script URL),
/// atftpd or tftpd-hpa for the loaders, nginx for the script and the images. `boot.ipxe` is the
/// static equivalent of zpxe's script for the same menu (without zpxe's progress reports).
#[allow(clippy::too_many_arguments)]
pub fn start_classic_in(
    name: &str,
    dnsmasq: &Path,
    nginx: &Path,
    tftp: &ClassicTftp,
    root: &Path,
    dir: &Path,
    ns: &str,
    ip: &str,
) -> anyhow::Result<Stack> {
    let dir = dir.join(name);
    fs::create_dir_all(&dir)?;
    let script_url = format!("http://{ip}:{NS_HTTP}/boot.ipxe");
    let mut stack = Stack {
        name: name.into(),
        parts: Vec::new(),
    };
    // Any failure below stops what already runs.
    let result = (|| -> anyhow::Result<()> {
        let mut conf = String::new();
        let _ = writeln!(conf, "port=0\ninterface=s0\nbind-interfaces");
        let _ = writeln!(conf, "dhcp-range={ip},proxy");
        let _ = writeln!(conf, "dhcp-leasefile={}", dir.join("leases").display());
        let _ = writeln!(conf, "dhcp-userclass=set:ipxe,iPXE");
        let _ = writeln!(conf, "pxe-prompt=\"zpxe-bench\",0");
        for (csa, file) in DNSMASQ_LOADERS {
            let _ = writeln!(conf, "pxe-service=tag:!ipxe,{csa},\"boot\",{file}");
            let _ = writeln!(conf, "pxe-service=tag:ipxe,{csa},\"script\",{script_url}");
        }
        let _ = writeln!(
            conf,
            "log-facility={}",
            dir.join("dnsmasq.syslog").display()
        );
        let conf_path = dir.join("dnsmasq.conf");
        fs::write(&conf_path, conf)?;
        let log = dir.join("dnsmasq.log");
        let mut child = spawn(
            crate::netns::NetPair::command(ns, dnsmasq)
                .arg("-k")
                .arg(format!("--conf-file={}", conf_path.display()))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display())),
            &log,
        )?;
        let up = wait_in_ns(&mut child, &[(NS_DHCP, false), (NS_PXE, false)], &log);
        stack.parts.push((plain("dnsmasq", child), log));
        up.context("dnsmasq proxyDHCP")?;

        let log = dir.join("tftp.log");
        let (tftp_name, mut cmd) = match tftp {
            ClassicTftp::Atftpd(bin, max) => {
                let mut c = crate::netns::NetPair::command(ns, bin);
                c.args(["--daemon", "--no-fork", "--bind-address", ip])
                    .args(["--port", &NS_TFTP.to_string()])
                    .args(["--maxthread", &max.to_string()])
                    .args(["--logfile", "/dev/null", "--pidfile"])
                    .arg(dir.join("atftpd.pid"))
                    .arg(root);
                ("atftpd", c)
            }
            ClassicTftp::TftpdHpa(bin) => {
                let mut c = crate::netns::NetPair::command(ns, bin);
                c.args(["-L", "-s"])
                    .arg(root)
                    .args(["-a", &format!("{ip}:{NS_TFTP}")])
                    .args(["-P", &dir.join("tftpd-hpa.pid").to_string_lossy()]);
                ("tftpd-hpa", c)
            }
        };
        let mut child = spawn(&mut cmd, &log)?;
        let up = wait_in_ns(&mut child, &[(NS_TFTP, false)], &log);
        stack
            .parts
            .push((tftp_only(tftp_name, child, NS_TFTP), log));
        up.with_context(|| tftp_name.to_owned())?;

        let site = dir.join("site");
        fs::create_dir_all(&site)?;
        let base = format!("http://{ip}:{NS_HTTP}");
        fs::write(
            site.join("boot.ipxe"),
            format!(
                "#!ipxe\nmenu bench\nitem winpe WinPE\n\
                 choose --timeout 1000 --default winpe selected || goto cancel\n\
                 goto entry-${{selected}}\n:cancel\nexit\n:entry-winpe\n\
                 kernel {base}/wimboot || goto failed\n\
                 initrd -n BCD {base}/Boot/BCD BCD || goto failed\n\
                 initrd -n boot.sdi {base}/Boot/boot.sdi boot.sdi || goto failed\n\
                 initrd -n boot.wim {base}/sources/boot.wim boot.wim || goto failed\n\
                 boot || goto failed\n:failed\necho boot failed\nexit 1\n"
            ),
        )?;
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status()?;
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("logs"))?;
        let p = prefix.display();
        let conf = format!(
            "worker_processes auto;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  sendfile on; tcp_nopush on; access_log off;\n\
             default_type application/octet-stream; keepalive_requests 100000;\n\
             client_body_temp_path {p}/cb; proxy_temp_path {p}/px; fastcgi_temp_path {p}/fc;\n\
             uwsgi_temp_path {p}/uw; scgi_temp_path {p}/sc;\n\
             server {{ listen {ip}:{NS_HTTP}; root {root};\n\
             location = /boot.ipxe {{ root {site}; }} }}\n}}\n",
            root = root.display(),
            site = site.display()
        );
        let conf_path = prefix.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let log = dir.join("nginx.log");
        let mut child = spawn(
            crate::netns::NetPair::command(ns, nginx)
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"]),
            &log,
        )?;
        let up = wait_in_ns(&mut child, &[(NS_HTTP, true)], &log);
        stack.parts.push((plain("nginx", child), log));
        up.context("nginx")?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(stack),
        Err(e) => {
            stack.stop();
            Err(e)
        }
    }
}

/// The pool both DHCP servers hand out in the `dora` benchmark: a /12 holding the bench
/// namespaces' 10.83.x.0/24 links (so a relay's giaddr there selects it), 524,286 addresses
/// from 10.88.0.1, more than any bounded run takes.
pub const DORA_SUBNET: &str = "10.80.0.0/12";
pub const DORA_RANGE: (&str, &str) = ("10.88.0.1", "10.95.255.254");

/// zpxe as the DHCP server (`dhcp.mode = "server"`) inside namespace `ns`, on port 67 only (no
/// TFTP, HTTP or web service), its leases in SQLite under `dir`, warnings only in its log;
/// its loops poll before they sleep for up to `busy_poll_us` (`server.busy-poll-us`).
pub fn start_zpxe_dhcp_server_in(
    bin: &Path,
    dir: &Path,
    ns: &str,
    busy_poll_us: u64,
) -> anyhow::Result<Server> {
    let root = dir.join("root");
    fs::create_dir_all(&root)?;
    let config = dir.join("zpxe-server.toml");
    fs::write(
        &config,
        format!(
            "[server]\nroot = {root:?}\nlisten = [\"0.0.0.0\"]\nbusy-poll-us = {busy_poll_us}\n\n\
             [services]\ntftp = false\nhttp = false\nweb = false\n\n\
             [dhcp]\nmode = \"server\"\nlease-time-secs = 3600\n\n\
             [[dhcp.pool]]\nsubnet = \"{DORA_SUBNET}\"\nrange = [\"{}\", \"{}\"]\n",
            DORA_RANGE.0, DORA_RANGE.1
        ),
    )?;
    let log = dir.join("zpxe-server.log");
    let mut child = spawn(
        crate::netns::NetPair::command(ns, bin)
            .env("RUST_LOG", "warn")
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--dhcp-port", &NS_DHCP.to_string()])
            .args(["--pxe-port", &NS_PXE.to_string()])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("leases.db").display())),
        &log,
    )?;
    let up = wait_in_ns(&mut child, &[(NS_DHCP, false)], &log);
    let server = plain("zpxe", child);
    if let Err(e) = up {
        server.stop();
        return Err(e.context("zpxe in server mode"));
    }
    Ok(server)
}

/// dnsmasq as the DHCP server for the same pool inside namespace `ns` on interface `s0`: the
/// lease file under `dir` (written at every change, dnsmasq's own persistence), no DNS
/// (`port=0`), `dhcp-lease-max` above the pool, `dhcp-authoritative`; `no-ping` (zpxe makes no
/// conflict check either; with it dnsmasq waits for an ICMP echo before each new offer) and
/// `quiet-dhcp` (no log line per exchange, as zpxe at `warn`).
pub fn start_dnsmasq_dhcp_server_in(bin: &Path, dir: &Path, ns: &str) -> anyhow::Result<Server> {
    let mut conf = String::new();
    let _ = writeln!(conf, "port=0\ninterface=s0\nbind-interfaces");
    let _ = writeln!(
        conf,
        "dhcp-range={},{},255.240.0.0,1h",
        DORA_RANGE.0, DORA_RANGE.1
    );
    let _ = writeln!(conf, "dhcp-lease-max=1000000\ndhcp-authoritative");
    let _ = writeln!(conf, "no-ping\nquiet-dhcp");
    let _ = writeln!(conf, "dhcp-leasefile={}", dir.join("leases").display());
    let _ = writeln!(
        conf,
        "log-facility={}",
        dir.join("dnsmasq.syslog").display()
    );
    let path = dir.join("dnsmasq-server.conf");
    fs::write(&path, conf)?;
    let log = dir.join("dnsmasq-server.log");
    let mut child = spawn(
        crate::netns::NetPair::command(ns, bin)
            .arg("-k")
            .arg(format!("--conf-file={}", path.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display())),
        &log,
    )?;
    let up = wait_in_ns(&mut child, &[(NS_DHCP, false)], &log);
    let server = plain("dnsmasq", child);
    if let Err(e) = up {
        server.stop();
        return Err(e.context("dnsmasq as a DHCP server"));
    }
    Ok(server)
}
