//! Real client firmware against zpxe, under qemu (TCG, no KVM): SeaBIOS with the iPXE ROM,
//! OVMF with EDK2's own PXE stack (which then runs Debian's `snponly.efi` from zpxe), OVMF with
//! the iPXE EFI ROM, a client behind a DHCP relay, ARM64 (AAVMF's PXE, then an ARM64 iPXE),
//! UEFI HTTP Boot on x64 (OVMF) and ARM64 (AAVMF), and zpxe in pxe-only mode beside a DHCP
//! server on its own host (4011 only).
//!
//! Each scenario builds its own network namespaces: zpxe on a bridge in namespace `S` (the only
//! PXE server), dnsmasq in namespace `D` handing out addresses only (no PXE options) and
//! answering IPv6 router solicitations (so iPXE does not wait ~15 s for a router), and a tap
//! device for qemu on the client's bridge. zpxe's menu script downloads a payload of several
//! MB over HTTP and prints [`MARKER`] on the serial console. Success = the marker, the
//! payload's size as iPXE reports it, and zpxe's log showing every step in order. A failure
//! prints the serial log, zpxe's log, the other daemons' logs and a packet summary.
//!
//! ARM64 (qemu-system-aarch64 `virt` with AAVMF, arch 11) runs to the same marker: AAVMF's
//! PXE fetches an ARM64 iPXE over TFTP, which then DHCPs as iPXE and follows the script.
//! Debian 12's `ipxe` package ships x86 loaders only, so that iPXE is Debian 13's build
//! (`ipxe-arm64.efi` from its `ipxe` package), which tests/fixtures/firmware/fetch-ipxe-arm64.sh
//! puts in a cache directory (tests/run-all.sh runs it and exports [`IPXE_ARM64_ENV`]).
//!
//! UEFI HTTP Boot: Debian 12's OVMF and AAVMF both carry EDK2's HttpBootDxe (its module path is
//! in the LZMA-compressed firmware volume of each image; plain `strings` on the .fd finds
//! nothing). EDK2 gives each NIC one boot option per stack (PXEv4, PXEv6, HTTPv4, HTTPv6) and
//! tries them in that order; `bootindex` alone cannot put HTTP first. The `opt/org.tianocore`
//! fw_cfg knobs turn PXE and IPv6 off, which leaves "UEFI HTTPv4" as the NIC's only option on
//! OVMF. On AAVMF `IPv6Support=no` removes neither PXEv6 nor HTTPv6 (seen: without
//! `IPv6PXESupport=no` it tried "UEFI PXEv6" first; with it, HTTPv4 comes first and HTTPv6
//! after), so the scenarios also pass `IPv6PXESupport=no`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::common::{Server, pattern_file, require, run, zpxe_bin};
use crate::netns::ip;

/// Printed by the boot script after the payload is downloaded.
const MARKER: &str = "ZPXE-FIRMWARE-OK";
/// The payload the script downloads (several MB, not a round number).
const PAYLOAD_LEN: usize = 8 * 1024 * 1024 + 4321;
/// Longest a scenario may take from qemu's start to the marker (TCG on 2 shared cores; the
/// slowest scenario, ARM64, takes about 17-21 s here, EDK2's PXE on x86 about 11 s).
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// Names the ARM64 iPXE the ARM64 scenario serves; [`IPXE_ARM64_CACHED`] when unset.
const IPXE_ARM64_ENV: &str = "ZPXE_IPXE_ARM64";
/// Where tests/fixtures/firmware/fetch-ipxe-arm64.sh caches it by default.
const IPXE_ARM64_CACHED: &str = "/var/cache/zpxe-tests/ipxe-arm64/ipxe-arm64.efi";

/// Server-side subnet (zpxe .1, dnsmasq .2, relay .3) and the relayed client subnet.
const SERVER_NET: &str = "10.90.0";
const CLIENT_NET: &str = "10.91.0";
const ZPXE_IP: &str = "10.90.0.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with Debian's pxe-virtio.rom (iPXE as the NIC's option ROM).
    SeaBiosIpxeRom,
    /// OVMF with no option ROM: EDK2's own PXE, then snponly.efi from zpxe.
    OvmfEdk2Pxe,
    /// OVMF with Debian's efi-virtio.rom (iPXE's EFI driver as the NIC's option ROM).
    OvmfIpxeRom,
    /// qemu-system-aarch64 `virt` with AAVMF: EDK2's own PXE on ARM64, then an ARM64 iPXE
    /// from zpxe.
    Aavmf,
    /// OVMF with PXE off: EDK2's UEFI HTTP Boot (arch 16) fetches ipxe.efi from zpxe's HTTP
    /// port.
    OvmfHttpBoot,
    /// AAVMF with PXE off: UEFI HTTP Boot on ARM64 (arch 19) fetches the ARM64 iPXE.
    AavmfHttpBoot,
    /// OVMF with Secure Boot enforced (`OVMF_CODE_4M.secboot.fd`, Microsoft's keys enrolled by
    /// `OVMF_VARS_4M.ms.fd`, SMM on) and EDK2's own PXE (no option ROM: an unsigned iPXE
    /// driver would not load); tests/integration/secureboot.rs.
    OvmfSecureBootPxe,
    /// The same Secure Boot firmware with PXE off: UEFI HTTP Boot.
    OvmfSecureBootHttpBoot,
}

impl Firmware {
    fn arm64(self) -> bool {
        matches!(self, Firmware::Aavmf | Firmware::AavmfHttpBoot)
    }

    fn http_boot(self) -> bool {
        matches!(
            self,
            Firmware::OvmfHttpBoot | Firmware::AavmfHttpBoot | Firmware::OvmfSecureBootHttpBoot
        )
    }

    fn secure_boot(self) -> bool {
        matches!(
            self,
            Firmware::OvmfSecureBootPxe | Firmware::OvmfSecureBootHttpBoot
        )
    }
}

/// Where the addresses come from and how zpxe takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// dnsmasq hands out addresses from its own namespace `D` (no PXE options); zpxe answers
    /// as proxyDHCP on 67 and 4011.
    Proxy,
    /// The client is in namespace `C` behind a router namespace running a DHCP relay, so every
    /// DHCP packet zpxe sees carries a real giaddr.
    Relayed,
    /// dnsmasq runs on zpxe's own host (namespace `S`), owns UDP 67 and sends option 60
    /// "PXEClient" to PXE clients; zpxe runs with `dhcp.mode = "pxe-only"` and answers on 4011
    /// only (the Windows DHCP + WDS set-up).
    SameHost,
    /// No other DHCPv4 server: zpxe runs with `dhcp.mode = "server"` and hands out the
    /// addresses itself (dnsmasq only sends IPv6 router advertisements, so iPXE does not wait
    /// for a router).
    Server,
    /// [`Net::Relayed`]'s router and relay with zpxe in `dhcp.mode = "server"` as the only
    /// DHCPv4 server: dnsmasq in `D` hands out no addresses (the relay still forwards to it).
    RelayedServer,
}

/// Fails the test when a file a package provides is missing.
pub fn require_file(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.is_file(),
        "this test needs {path} from Debian package `{package}`: run tests/run-all.sh, which installs it"
    );
    p
}

/// The ARM64 iPXE to serve, or a failure saying how to get it.
fn ipxe_arm64() -> PathBuf {
    let p = std::env::var_os(IPXE_ARM64_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(IPXE_ARM64_CACHED));
    assert!(
        p.is_file(),
        "the ARM64 scenario needs an ARM64 iPXE at {} ({IPXE_ARM64_ENV}, default \
         {IPXE_ARM64_CACHED}): run tests/fixtures/firmware/fetch-ipxe-arm64.sh as root \
         (tests/run-all.sh does)",
        p.display()
    );
    p
}

/// A background process started by the test, stopped by its PID on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not print {needle:?} within {within:?}:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGTERM (so tcpdump flushes), then SIGKILL if it is still there.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .output();
            for _ in 0..20 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The namespaces, daemons and files of one scenario; all removed on drop.
pub struct Lab {
    pub dir: tempfile::TempDir,
    server_ns: String,
    /// Where qemu runs and its tap lives: the server namespace, or `C` behind the relay.
    client_ns: String,
    tap: String,
    namespaces: Vec<String>,
    daemons: Vec<Proc>,
    /// (label, pcap file) per capture.
    captures: Vec<(String, PathBuf)>,
}

impl Lab {
    /// Builds the network for `net`.
    pub fn new(tag: &str, net: Net) -> Lab {
        require("ip");
        require("tcpdump");
        require("dnsmasq");
        let id = std::process::id();
        let name = |r: &str| format!("zfw-{tag}-{id}-{r}");
        let (s, d) = (name("S"), name("D"));
        let mut lab = Lab {
            dir: tempfile::tempdir().expect("tmp"),
            server_ns: s.clone(),
            client_ns: s.clone(),
            tap: "tap0".into(),
            namespaces: Vec::new(),
            daemons: Vec::new(),
            captures: Vec::new(),
        };
        lab.add_ns(&s);
        ip(&["-n", &s, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &s,
            "addr",
            "add",
            &format!("{ZPXE_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &s, "link", "set", "br0", "up"]);
        if net == Net::Server {
            ip(&[
                "-n",
                &s,
                "addr",
                "add",
                "fd00:90::1/64",
                "dev",
                "br0",
                "nodad",
            ]);
            let mut ra = lab.dnsmasq_cmd(&s, "br0");
            ra.args(["--enable-ra", "--dhcp-range=fd00:90::,ra-only"]);
            lab.start_dnsmasq("dnsmasq", ra);
            ip(&["-n", &s, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
            ip(&["-n", &s, "link", "set", "tap0", "master", "br0", "up"]);
            lab.capture(&s, "br0");
            return lab;
        }
        if net == Net::SameHost {
            // dnsmasq beside zpxe on br0: addresses, option 60 "PXEClient" to PXE clients (so
            // they ask this host's 4011), and router advertisements. No pxe-service lines, so
            // dnsmasq leaves 4011 to zpxe.
            ip(&[
                "-n",
                &s,
                "addr",
                "add",
                "fd00:90::1/64",
                "dev",
                "br0",
                "nodad",
            ]);
            let mut dnsmasq = lab.dnsmasq_cmd(&s, "br0");
            dnsmasq.args([
                &format!("--dhcp-range={SERVER_NET}.100,{SERVER_NET}.150,255.255.255.0,1h"),
                "--dhcp-vendorclass=set:pxe,PXEClient",
                "--dhcp-option-force=tag:pxe,60,PXEClient",
                "--enable-ra",
                "--dhcp-range=fd00:90::,ra-only",
            ]);
            lab.start_dnsmasq("dnsmasq", dnsmasq);
            ip(&["-n", &s, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
            ip(&["-n", &s, "link", "set", "tap0", "master", "br0", "up"]);
            lab.capture(&s, "br0");
            return lab;
        }
        // The DHCP server's namespace, on the bridge.
        lab.add_ns(&d);
        ip(&[
            "link", "add", "d0", "netns", &s, "type", "veth", "peer", "name", "d1", "netns", &d,
        ]);
        ip(&["-n", &s, "link", "set", "d0", "master", "br0", "up"]);
        ip(&[
            "-n",
            &d,
            "addr",
            "add",
            &format!("{SERVER_NET}.2/24"),
            "dev",
            "d1",
        ]);
        ip(&[
            "-n",
            &d,
            "addr",
            "add",
            "fd00:90::2/64",
            "dev",
            "d1",
            "nodad",
        ]);
        ip(&["-n", &d, "link", "set", "d1", "up"]);

        let mut dnsmasq = lab.dnsmasq_cmd(&d, "d1");
        let dnsmasq_leases = net != Net::RelayedServer;
        if dnsmasq_leases {
            dnsmasq.arg(format!(
                "--dhcp-range={SERVER_NET}.100,{SERVER_NET}.150,255.255.255.0,1h"
            ));
        }
        if matches!(net, Net::Relayed | Net::RelayedServer) {
            let (r, c) = (name("R"), name("C"));
            lab.add_ns(&r);
            lab.add_ns(&c);
            // Router R: rS on the server bridge, rC on the client segment, forwarding.
            ip(&[
                "link", "add", "r0", "netns", &s, "type", "veth", "peer", "name", "rS", "netns", &r,
            ]);
            ip(&["-n", &s, "link", "set", "r0", "master", "br0", "up"]);
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("{SERVER_NET}.3/24"),
                "dev",
                "rS",
            ]);
            ip(&["-n", &r, "link", "set", "rS", "up"]);
            ip(&[
                "link", "add", "cR", "netns", &c, "type", "veth", "peer", "name", "rC", "netns", &r,
            ]);
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("{CLIENT_NET}.1/24"),
                "dev",
                "rC",
            ]);
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                "fd00:91::1/64",
                "dev",
                "rC",
                "nodad",
            ]);
            ip(&["-n", &r, "link", "set", "rC", "up"]);
            let (ok, out) = run(
                Command::new(require("ip")).args([
                    "netns",
                    "exec",
                    &r,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_forward=1",
                ]),
                Duration::from_secs(10),
            );
            assert!(ok, "ip_forward in {r}: {out}");
            for ns in [&s, &d] {
                ip(&[
                    "-n",
                    ns,
                    "route",
                    "add",
                    &format!("{CLIENT_NET}.0/24"),
                    "via",
                    &format!("{SERVER_NET}.3"),
                ]);
            }
            // Client namespace C: a bridge with the veth to R and qemu's tap.
            ip(&["-n", &c, "link", "add", "brc", "type", "bridge"]);
            ip(&["-n", &c, "link", "set", "brc", "up"]);
            ip(&["-n", &c, "link", "set", "cR", "master", "brc", "up"]);
            ip(&["-n", &c, "tuntap", "add", "dev", "tap1", "mode", "tap"]);
            ip(&["-n", &c, "link", "set", "tap1", "master", "brc", "up"]);
            if dnsmasq_leases {
                dnsmasq.arg(format!(
                    "--dhcp-range={CLIENT_NET}.100,{CLIENT_NET}.150,255.255.255.0,1h"
                ));
            }
            lab.start_dnsmasq("dnsmasq-dhcp", dnsmasq);
            // Router advertisements for the client segment, from the router.
            let mut ra = lab.dnsmasq_cmd(&r, "rC");
            ra.args(["--enable-ra", "--dhcp-range=fd00:91::,ra-only"]);
            lab.start_dnsmasq("dnsmasq-ra", ra);
            let relay_script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firmware/dhcp-relay.py");
            let mut relay = Command::new(require("ip"));
            relay
                .args(["netns", "exec", &r])
                .arg(require("python3"))
                .arg("-u")
                .arg(relay_script)
                .arg(format!("{CLIENT_NET}.1"))
                .arg("rC")
                .arg(ZPXE_IP)
                .arg(format!("{SERVER_NET}.2"));
            let log = lab.dir.path().join("relay.log");
            let mut relay = Proc::spawn("dhcp-relay", relay, log);
            relay.wait_for("relay ready", Duration::from_secs(10));
            lab.daemons.push(relay);
            lab.client_ns = c.clone();
            lab.tap = "tap1".into();
            lab.capture(&c, "brc");
        } else {
            dnsmasq.args(["--enable-ra", "--dhcp-range=fd00:90::,ra-only"]);
            lab.start_dnsmasq("dnsmasq", dnsmasq);
            ip(&["-n", &s, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
            ip(&["-n", &s, "link", "set", "tap0", "master", "br0", "up"]);
        }
        lab.capture(&s, "br0");
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    fn dnsmasq_cmd(&self, ns: &str, dev: &str) -> Command {
        let tag = self.daemons.len();
        let mut c = Command::new(require("ip"));
        c.args(["netns", "exec", ns])
            .arg(require("dnsmasq"))
            .args([
                "--keep-in-foreground",
                "--log-facility=-",
                "--log-dhcp",
                "--port=0",
                "--bind-interfaces",
            ])
            .arg(format!("--interface={dev}"))
            // Its own pid and lease files: a leftover default pid file stops dnsmasq at start.
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join(format!("dnsmasq{tag}.pid")).display()
            ))
            .arg(format!(
                "--dhcp-leasefile={}",
                self.dir
                    .path()
                    .join(format!("dnsmasq{tag}.leases"))
                    .display()
            ));
        c
    }

    fn start_dnsmasq(&mut self, name: &str, cmd: Command) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut p = Proc::spawn(name, cmd, log);
        p.wait_for("started, version", Duration::from_secs(10));
        self.daemons.push(p);
    }

    /// Captures DHCP, TFTP and HTTP traffic on `dev` in `ns` for the failure report.
    fn capture(&mut self, ns: &str, dev: &str) {
        let pcap = self.dir.path().join(format!("{dev}.pcap"));
        let mut cmd = Command::new(require("ip"));
        cmd.args(["netns", "exec", ns])
            .arg(require("tcpdump"))
            .args(["-U", "-n", "-s", "400", "-i", dev, "-w"])
            .arg(&pcap)
            .arg("udp or tcp port 8050 or tcp port 8051");
        let log = self.dir.path().join(format!("tcpdump-{dev}.log"));
        let mut p = Proc::spawn(&format!("tcpdump {dev}"), cmd, log);
        p.wait_for("listening on", Duration::from_secs(10));
        self.daemons.push(p);
        self.captures.push((format!("{ns} {dev}"), pcap));
    }

    /// Puts `src` below zpxe's root as `name` (before [`Lab::start_zpxe`]).
    pub fn serve_file(&self, src: &Path, name: &str) {
        let to = self.root_path(name);
        std::fs::copy(src, &to)
            .unwrap_or_else(|e| panic!("copy {} to zpxe's root: {e}", src.display()));
    }

    /// Writes `text` below zpxe's root as `name`.
    pub fn serve_text(&self, name: &str, text: &str) {
        std::fs::write(self.root_path(name), text).expect("write below zpxe's root");
    }

    /// `name` below zpxe's root, its directory made.
    fn root_path(&self, name: &str) -> PathBuf {
        let to = self.dir.path().join("root").join(name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        to
    }

    /// The files zpxe serves and its configuration (the fixture plus `extra` TOML); returns the
    /// config path.
    fn zpxe_root(&self, extra: &str) -> PathBuf {
        self.zpxe_root_from("zpxe.toml", extra)
    }

    /// As [`Lab::zpxe_root`] with another fixture of tests/fixtures/firmware.
    fn zpxe_root_from(&self, fixture: &str, extra: &str) -> PathBuf {
        let root = self.dir.path().join("root");
        for (file, package) in [
            ("/usr/lib/ipxe/undionly.kpxe", "ipxe"),
            ("/usr/lib/ipxe/ipxe.efi", "ipxe"),
            ("/usr/lib/ipxe/snponly.efi", "ipxe"),
        ] {
            let src = require_file(file, package);
            std::fs::create_dir_all(&root).expect("mkdir");
            std::fs::copy(&src, root.join(src.file_name().expect("name"))).expect("copy loader");
        }
        pattern_file(&root.join("payload.bin"), PAYLOAD_LEN, 7);
        let config = self.dir.path().join("zpxe.toml");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/firmware")
                .join(fixture),
        )
        .expect("fixture config")
        .replace("@ROOT@", &root.display().to_string())
        .replace("@SERVER@", ZPXE_IP)
            + extra;
        std::fs::write(&config, text).expect("write config");
        config
    }

    fn start_zpxe(&self) -> Server {
        self.start_zpxe_with("")
    }

    /// Starts zpxe with `extra` TOML after the fixture configuration.
    fn start_zpxe_with(&self, extra: &str) -> Server {
        self.start_zpxe_from("zpxe.toml", extra)
    }

    /// Starts zpxe with another fixture of tests/fixtures/firmware, then `extra` TOML.
    pub fn start_zpxe_from(&self, fixture: &str, extra: &str) -> Server {
        require("ip");
        let config = self.zpxe_root_from(fixture, extra);
        let root = self.dir.path().join("root");
        Server::start_in_ns_logging(
            &self.server_ns,
            "0.0.0.0",
            &root,
            &["--config", config.to_str().expect("utf8 path")],
            "info,zpxe::serve::http=debug",
        )
    }

    fn qemu(&self, fw: Firmware, mac: &str, uuid: &str, serial: &Path) -> Command {
        let mut c = Command::new(require("ip"));
        c.args(["netns", "exec", &self.client_ns]);
        if fw.arm64() {
            c.arg(require("qemu-system-aarch64")).args([
                "-machine",
                "virt",
                "-cpu",
                "cortex-a57",
                "-accel",
                "tcg",
                "-m",
                "512",
            ]);
        } else if fw.secure_boot() {
            // Secure Boot's variables live in SMM-protected flash: without SMM and a secure
            // pflash the secboot build does not start.
            c.arg(require("qemu-system-x86_64")).args([
                "-machine",
                "q35,smm=on",
                "-global",
                "driver=cfi.pflash01,property=secure,value=on",
                "-accel",
                "tcg",
                "-m",
                "512",
            ]);
        } else {
            c.arg(require("qemu-system-x86_64"))
                .args(["-machine", "q35", "-accel", "tcg", "-m", "256"]);
        }
        c.args([
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-uuid", uuid])
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            self.tap
        ));
        let nic = format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1");
        match fw {
            Firmware::SeaBiosIpxeRom => {
                // SeaBIOS prints nothing without a display unless told to copy its text
                // screen to the serial port (0x3f8).
                let sercon = self.dir.path().join("sercon-port");
                std::fs::write(&sercon, [0xf8, 0x03]).expect("sercon");
                let rom = require_file("/usr/lib/ipxe/qemu/pxe-virtio.rom", "ipxe-qemu");
                c.arg("-fw_cfg")
                    .arg(format!("name=etc/sercon-port,file={}", sercon.display()))
                    // Debian's ROM carries PCI id 1af4:1041 (modern virtio): without
                    // disable-legacy SeaBIOS skips it silently.
                    .arg("-device")
                    .arg(format!("{nic},disable-legacy=on,romfile={}", rom.display()));
            }
            Firmware::Aavmf | Firmware::AavmfHttpBoot => {
                let code = require_file("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64");
                let vars_src = require_file("/usr/share/AAVMF/AAVMF_VARS.fd", "qemu-efi-aarch64");
                let vars = self.dir.path().join("AAVMF_VARS.fd");
                std::fs::copy(vars_src, &vars).expect("copy AAVMF vars");
                c.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        code.display()
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ))
                    .arg("-device")
                    .arg(format!("{nic},romfile="));
            }
            Firmware::OvmfEdk2Pxe
            | Firmware::OvmfIpxeRom
            | Firmware::OvmfHttpBoot
            | Firmware::OvmfSecureBootPxe
            | Firmware::OvmfSecureBootHttpBoot => {
                let (code, vars) = if fw.secure_boot() {
                    ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
                } else {
                    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
                };
                let code = require_file(&format!("/usr/share/OVMF/{code}"), "ovmf");
                let vars_src = require_file(&format!("/usr/share/OVMF/{vars}"), "ovmf");
                let vars = self.dir.path().join("OVMF_VARS.fd");
                std::fs::copy(vars_src, &vars).expect("copy OVMF vars");
                c.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={}",
                        code.display()
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ))
                    .arg("-device");
                if fw != Firmware::OvmfIpxeRom {
                    // An empty romfile keeps iPXE's EFI ROM out: EDK2's own PXE boots.
                    c.arg(format!("{nic},romfile="));
                } else {
                    let rom = require_file("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu");
                    c.arg(format!("{nic},disable-legacy=on,romfile={}", rom.display()));
                }
            }
        }
        if fw.http_boot() {
            // PXE (v4 and v6) and the IPv6 stack off: the NIC's only boot option is
            // "UEFI HTTPv4" (see the module comment).
            for knob in ["IPv4PXESupport", "IPv6PXESupport", "IPv6Support"] {
                c.arg("-fw_cfg")
                    .arg(format!("name=opt/org.tianocore/{knob},string=no"));
            }
        }
        c
    }

    /// Boots `fw` until the marker appears. With `stop_zpxe_after`, zpxe is stopped as soon
    /// as its log contains that text. Returns the time to the marker, or why it failed.
    fn boot(
        &mut self,
        server: &mut Server,
        fw: Firmware,
        mac: &str,
        uuid: &str,
        limit: Duration,
        stop_zpxe_after: Option<&str>,
    ) -> Result<Duration, String> {
        self.boot_until(server, fw, mac, uuid, limit, stop_zpxe_after, MARKER)
    }

    /// [`Lab::boot`] until `marker` is on the serial console.
    #[allow(clippy::too_many_arguments)]
    pub fn boot_until(
        &mut self,
        server: &mut Server,
        fw: Firmware,
        mac: &str,
        uuid: &str,
        limit: Duration,
        stop_zpxe_after: Option<&str>,
        marker: &str,
    ) -> Result<Duration, String> {
        let serial = self.serial_path();
        let qemu_log = self.dir.path().join("qemu.log");
        let start = Instant::now();
        let mut vm = Proc::spawn("qemu", self.qemu(fw, mac, uuid, &serial), qemu_log);
        let mut stopped = false;
        let result = loop {
            std::thread::sleep(Duration::from_millis(100));
            let text = read_lossy(&serial);
            if text.contains(marker) {
                break Ok(start.elapsed());
            }
            if let Some(needle) = stop_zpxe_after
                && !stopped
                && server.drain_log().iter().any(|l| l.contains(needle))
            {
                server.stop();
                stopped = true;
            }
            let zpxe = if server.alive() {
                "zpxe is running"
            } else {
                "zpxe is NOT running (stopped or crashed)"
            };
            if let Some(gave_up) = [
                "No bootable device",
                "No bootable option",
                "Nothing to boot",
                "zpxe: boot failed",
                // EDK2's HTTP Boot got no usable offer or file; OVMF then falls to its shell.
                "Could not retrieve NBP file size",
                "UEFI Interactive Shell",
                // Secure Boot refused an image: EDK2 ("Access Denied"), shim ("Verification
                // failed: (0x1A) Security Violation"), GRUB (a kernel shim would not verify,
                // after which `boot` has nothing to start).
                "Access Denied",
                "Security Violation",
                "bad shim signature",
                "you need to load the kernel first",
            ]
            .into_iter()
            .find(|g| text.contains(g))
            {
                break Err(format!(
                    "{fw:?}: the firmware gave up after {:.1}s (serial console: {gave_up:?}) \
                     without printing {marker:?}; {zpxe}",
                    start.elapsed().as_secs_f64()
                ));
            }
            let daemons = &mut self.daemons;
            if let Some(i) =
                (0..daemons.len()).find(|&i| matches!(daemons[i].child.try_wait(), Ok(Some(_))))
            {
                let d = &daemons[i];
                break Err(format!(
                    "{fw:?}: {} exited during the boot; {zpxe}:\n{}",
                    d.name,
                    tail(&d.log_text(), 30)
                ));
            }
            if let Ok(Some(status)) = vm.child.try_wait() {
                break Err(format!(
                    "{fw:?}: qemu exited ({status}) without printing {marker:?}; {zpxe}:\n{}",
                    vm.log_text()
                ));
            }
            if start.elapsed() > limit {
                break Err(format!(
                    "{fw:?}: {marker:?} not on the serial console within {limit:?}; {zpxe}"
                ));
            }
        };
        vm.stop();
        result
    }

    pub fn serial_path(&self) -> PathBuf {
        self.dir.path().join("serial.log")
    }

    /// Everything needed to see why a boot failed: serial console, zpxe's log, the other
    /// daemons' logs and a packet summary of each capture.
    pub fn report(&self, server: &mut Server) -> String {
        let mut out = String::new();
        out.push_str("\n===== serial console =====\n");
        out.push_str(&printable(&read_lossy(&self.serial_path())));
        out.push_str("\n===== zpxe log =====\n");
        out.push_str(&server.drain_log().join("\n"));
        for d in &self.daemons {
            if !d.name.starts_with("tcpdump") {
                out.push_str(&format!("\n===== {} log =====\n", d.name));
                out.push_str(&tail(&d.log_text(), 60));
            }
        }
        for (label, pcap) in &self.captures {
            let (_, summary) = run(
                Command::new(require("tcpdump"))
                    .args(["-n", "-r"])
                    .arg(pcap),
                Duration::from_secs(20),
            );
            out.push_str(&format!("\n===== packets on {label} =====\n"));
            out.push_str(&tail(&summary, 150));
        }
        out
    }

    /// Runs a scenario to the end: boot, then check zpxe's log for `steps` in order.
    fn expect_boot(
        &mut self,
        server: &mut Server,
        fw: Firmware,
        mac: &str,
        uuid: &str,
        steps: &[&[&str]],
    ) {
        match self.boot(server, fw, mac, uuid, BOOT_LIMIT, None) {
            Ok(took) => {
                eprintln!("firmware {fw:?}: marker after {:.1}s", took.as_secs_f64());
            }
            Err(why) => panic!("{why}{}", self.report(server)),
        }
        let serial = read_lossy(&self.serial_path());
        let size_line = format!("payload : {PAYLOAD_LEN} bytes");
        assert!(
            serial.contains(&size_line),
            "iPXE did not report {size_line:?}{}",
            self.report(server)
        );
        // Give the last log lines a moment to arrive.
        std::thread::sleep(Duration::from_millis(300));
        let lines = server.drain_log().to_vec();
        if let Err(missing) = steps_in_order(&lines, steps) {
            panic!(
                "zpxe's log lacks step {missing:?} (in this order: {steps:?}){}",
                self.report(server)
            );
        }
    }
}

impl Lab {
    /// The log of the daemon started as `name`.
    pub fn daemon_log(&self, name: &str) -> String {
        self.daemons
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no daemon {name}"))
            .log_text()
    }

    /// The serial console shows the firmware itself booting over HTTP, with no PXE attempt.
    fn expect_http_boot_on_serial(&self, server: &mut Server) {
        let serial = printable(&read_lossy(&self.serial_path()));
        assert!(
            serial.contains("Start HTTP Boot over IPv4") && !serial.contains("Start PXE"),
            "the firmware did not boot over UEFI HTTP Boot alone{}",
            self.report(server)
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.stop();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Finds each step (all of its substrings on one line) after the previous one.
fn steps_in_order(lines: &[String], steps: &[&[&str]]) -> Result<(), String> {
    let mut from = 0;
    for step in steps {
        match lines[from..]
            .iter()
            .position(|l| step.iter().all(|s| l.contains(s)))
        {
            Some(i) => from += i + 1,
            None => return Err(step.join(" ")),
        }
    }
    Ok(())
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Serial output without ANSI escapes, backspaces and carriage returns.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for n in chars.by_ref() {
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\x08' => {}
            c => out.push(c),
        }
    }
    let mut lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    lines.dedup();
    lines.retain(|l| !l.trim().is_empty());
    tail(&lines.join("\n"), 120)
}

// zpxe's JSON log (`[log] format = "json"`) read as facts: the fields of each event, not the
// wording of its line.

/// zpxe's JSON log lines, as objects (lines that are not JSON objects are left out).
pub fn events(server: &mut Server) -> Vec<Map<String, Value>> {
    server
        .drain_log()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

pub fn text<'a>(ev: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    ev.get(key).and_then(Value::as_str)
}

pub fn number(ev: &Map<String, Value>, key: &str) -> Option<u64> {
    ev.get(key).and_then(Value::as_u64)
}

/// The TFTP files completed, in order, with the bytes sent (transfers joined by id).
pub fn tftp_completed(events: &[Map<String, Value>]) -> Vec<(String, u64)> {
    let mut files = HashMap::new();
    let mut done = Vec::new();
    for ev in events {
        match text(ev, "message") {
            Some("TFTP transfer started") => {
                if let (Some(id), Some(file)) = (text(ev, "id"), text(ev, "file")) {
                    files.insert(id.to_owned(), file.to_owned());
                }
            }
            Some("TFTP transfer complete") => {
                let file = text(ev, "id").and_then(|id| files.get(id)).cloned();
                if let (Some(file), Some(bytes)) = (file, number(ev, "bytes")) {
                    done.push((file, bytes));
                }
            }
            _ => {}
        }
    }
    done
}

/// The files requested over TFTP, in order, served or not.
pub fn tftp_requested(events: &[Map<String, Value>]) -> Vec<String> {
    events
        .iter()
        .filter(|ev| {
            matches!(
                text(ev, "message"),
                Some("TFTP transfer started" | "TFTP request refused")
            )
        })
        .filter_map(|ev| text(ev, "file").map(str::to_owned))
        .collect()
}

/// HTTP requests answered: (method, path, status, bytes).
pub fn http_requests(events: &[Map<String, Value>]) -> Vec<(String, String, u64, u64)> {
    events
        .iter()
        .filter(|ev| text(ev, "message") == Some("HTTP request"))
        .map(|ev| {
            (
                text(ev, "method").unwrap_or("-").to_owned(),
                text(ev, "path").unwrap_or("-").to_owned(),
                number(ev, "status").unwrap_or(0),
                number(ev, "bytes").unwrap_or(0),
            )
        })
        .collect()
}

/// The boot files zpxe's DHCP server handed `mac` in its ACKs, in order.
pub fn acked_boot_files(events: &[Map<String, Value>], mac: &str) -> Vec<String> {
    events
        .iter()
        .filter(|ev| text(ev, "message") == Some("DHCP ack") && text(ev, "mac") == Some(mac))
        .filter_map(|ev| text(ev, "boot_file").map(str::to_owned))
        .collect()
}

/// Finds each of `wanted` in `seen`, in this order.
pub fn in_order<T: PartialEq + std::fmt::Debug>(seen: &[T], wanted: &[T]) -> Result<(), String> {
    let mut from = 0;
    for w in wanted {
        match seen[from..].iter().position(|s| s == w) {
            Some(i) => from += i + 1,
            None => return Err(format!("{w:?} missing after position {from} of {seen:?}")),
        }
    }
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The HTTP steps every scenario ends with: the generated script, then the payload.
fn http_steps(peer_net: &str) -> Vec<String> {
    vec![
        format!("peer={peer_net}."),
        "path=\"/boot.ipxe\" status=200".into(),
        format!("path=\"/payload.bin\" status=200 bytes={PAYLOAD_LEN}"),
    ]
}

#[test]
fn bios_seabios_ipxe_rom_boots_from_zpxe() {
    let mut lab = Lab::new("bios", Net::Proxy);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:01";
    let uuid = "a1b2c3d4-0001-4000-8000-000000000001";
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::SeaBiosIpxeRom,
        mac,
        uuid,
        &[
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"0\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
}

#[test]
fn uefi_edk2_pxe_chainloads_snponly_from_zpxe() {
    let mut lab = Lab::new("edk2", Net::Proxy);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:02";
    let uuid = "a1b2c3d4-0002-4000-8000-000000000002";
    let size = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .expect("snponly.efi")
        .len();
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfEdk2Pxe,
        mac,
        uuid,
        &[
            // EDK2's PXE: arch 7, the loader over TFTP.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"7\"",
                "ipxe=false",
                "boot_file=\"snponly.efi\"",
            ],
            // The size probe (tsize) with windowsize 4, aborted with ERROR 8 after the OACK...
            &[
                "TFTP transfer started",
                "file=\"snponly.efi\"",
                "blksize=1468",
                "windowsize=4",
            ],
            &["TFTP size probe done", "client ERROR 8"],
            // ...then the real transfer.
            &[
                "TFTP transfer started",
                "file=\"snponly.efi\"",
                "windowsize=4",
            ],
            &["TFTP transfer complete", &format!("bytes={size}")],
            // snponly.efi (iPXE) asks again and gets the script URL, not the loader.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"7\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
}

#[test]
fn uefi_ipxe_efi_rom_boots_from_zpxe() {
    let mut lab = Lab::new("efirom", Net::Proxy);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:03";
    let uuid = "a1b2c3d4-0003-4000-8000-000000000003";
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfIpxeRom,
        mac,
        uuid,
        &[
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"7\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
}

#[test]
fn relayed_uefi_client_boots_through_giaddr() {
    let mut lab = Lab::new("relay", Net::Relayed);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:91:00:05";
    let uuid = "a1b2c3d4-0005-4000-8000-000000000005";
    let relay = format!("relay=\"{CLIENT_NET}.1\"");
    let http = http_steps(CLIENT_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfEdk2Pxe,
        mac,
        uuid,
        &[
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"7\"",
                &relay,
                "ipxe=false",
                "boot_file=\"snponly.efi\"",
            ],
            &["TFTP transfer complete", &format!("remote={CLIENT_NET}.")],
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &relay,
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
}

/// ARM64 end to end: AAVMF's PXE (arch 11) loads the ARM64 iPXE over TFTP, which gets the
/// script URL on its own DHCP and follows it (see the module comment for where it comes from).
#[test]
fn arm64_aavmf_pxe_chainloads_arm64_ipxe_from_zpxe() {
    let loader = ipxe_arm64();
    let mut lab = Lab::new("arm64", Net::Proxy);
    let size = std::fs::metadata(&loader).expect("ARM64 iPXE").len();
    lab.serve_file(&loader, "ipxe-arm64.efi");
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:0b";
    let uuid = "a1b2c3d4-000b-4000-8000-00000000000b";
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::Aavmf,
        mac,
        uuid,
        &[
            // AAVMF's PXE (EDK2 on ARM64): arch 11, the ARM64 loader over TFTP.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"11\"",
                "ipxe=false",
                "boot_file=\"ipxe-arm64.efi\"",
            ],
            // The size probe (tsize) with windowsize 4, aborted with ERROR 8 after the OACK...
            &[
                "TFTP transfer started",
                "file=\"ipxe-arm64.efi\"",
                "blksize=1468",
                "windowsize=4",
            ],
            &["TFTP size probe done", "client ERROR 8"],
            // ...then the real transfer.
            &[
                "TFTP transfer started",
                "file=\"ipxe-arm64.efi\"",
                "windowsize=4",
            ],
            &["TFTP transfer complete", &format!("bytes={size}")],
            // iPXE on ARM64 asks again and gets the script URL, not the loader.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"11\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
}

/// The boot-file URL zpxe hands to UEFI HTTP Boot clients for `file`.
fn http_boot_url(file: &str) -> String {
    format!("http://{ZPXE_IP}:8050/{file}")
}

/// UEFI HTTP Boot on x64: OVMF with PXE off (its NIC's only boot option is "UEFI HTTPv4")
/// sends DISCOVER with `HTTPClient:Arch:00016`, takes zpxe's proxy offer (option 60
/// HTTPClient, the URL as boot file) beside dnsmasq's address, fetches ipxe.efi from zpxe over
/// HTTP, and iPXE then follows the script.
#[test]
fn uefi_http_boot_x64_fetches_ipxe_over_http_from_zpxe() {
    let mut lab = Lab::new("http", Net::Proxy);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:10";
    let uuid = "a1b2c3d4-0010-4000-8000-000000000010";
    let size = std::fs::metadata("/usr/lib/ipxe/ipxe.efi")
        .expect("ipxe.efi")
        .len();
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfHttpBoot,
        mac,
        uuid,
        &[
            // HttpBootDxe: arch 16, the loader as a URL.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"16\"",
                "ipxe=false",
                &format!("boot_file=\"{}\"", http_boot_url("ipxe.efi")),
            ],
            // The firmware downloads it from zpxe's HTTP port (a HEAD first, then this GET).
            &[
                "HTTP request",
                &http[0],
                "path=\"/ipxe.efi\"",
                "status=200",
                &format!("bytes={size}"),
            ],
            // ipxe.efi asks again as iPXE (arch 7) and gets the script URL.
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"7\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    lab.expect_http_boot_on_serial(&mut server);
}

/// UEFI HTTP Boot through a relay: the HTTPClient offer goes back to the relay (giaddr) with
/// the broadcast flag, and the firmware fetches ipxe.efi across the router.
#[test]
fn relayed_uefi_http_boot_x64_fetches_ipxe_through_giaddr() {
    let mut lab = Lab::new("httprelay", Net::Relayed);
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:91:00:10";
    let uuid = "a1b2c3d4-0110-4000-8000-000000000110";
    let size = std::fs::metadata("/usr/lib/ipxe/ipxe.efi")
        .expect("ipxe.efi")
        .len();
    let relay = format!("relay=\"{CLIENT_NET}.1\"");
    let http = http_steps(CLIENT_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfHttpBoot,
        mac,
        uuid,
        &[
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"16\"",
                &relay,
                "ipxe=false",
                &format!("boot_file=\"{}\"", http_boot_url("ipxe.efi")),
            ],
            &[
                "HTTP request",
                &http[0],
                "path=\"/ipxe.efi\"",
                "status=200",
                &format!("bytes={size}"),
            ],
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &relay,
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    lab.expect_http_boot_on_serial(&mut server);
}

/// UEFI HTTP Boot on ARM64 (arch 19): AAVMF with PXE off fetches the ARM64 iPXE from zpxe
/// over HTTP (`boot.http-boot-arm64`), which then follows the script as iPXE (arch 11).
#[test]
fn uefi_http_boot_arm64_fetches_arm64_ipxe_over_http_from_zpxe() {
    let loader = ipxe_arm64();
    let mut lab = Lab::new("httparm", Net::Proxy);
    let size = std::fs::metadata(&loader).expect("ARM64 iPXE").len();
    lab.serve_file(&loader, "ipxe-arm64.efi");
    let mut server = lab.start_zpxe();
    let mac = "52:54:00:90:00:13";
    let uuid = "a1b2c3d4-0013-4000-8000-000000000013";
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::AavmfHttpBoot,
        mac,
        uuid,
        &[
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"19\"",
                "ipxe=false",
                &format!("boot_file=\"{}\"", http_boot_url("ipxe-arm64.efi")),
            ],
            &[
                "HTTP request",
                &http[0],
                "path=\"/ipxe-arm64.efi\"",
                "status=200",
                &format!("bytes={size}"),
            ],
            &[
                "proxyDHCP offer",
                &format!("mac={mac}"),
                "arch=\"11\"",
                "ipxe=true",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    lab.expect_http_boot_on_serial(&mut server);
}

/// 4011 only: dnsmasq on zpxe's own host owns UDP 67, hands out the address and sends option 60
/// "PXEClient"; zpxe in pxe-only mode binds 4011 but not 67. EDK2's PXE takes dnsmasq's offer
/// as a boot server announcement, asks this host's 4011 for its boot file, gets snponly.efi
/// from zpxe over TFTP, and iPXE asks 4011 again and follows the script.
#[test]
fn pxe_only_beside_a_dhcp_server_on_the_same_host_boots_through_4011() {
    let mut lab = Lab::new("pxeonly", Net::SameHost);
    // Without pxe-only zpxe cannot even start there: 67 is dnsmasq's.
    let config = lab.zpxe_root("");
    let (started, out) = run(
        Command::new(require("ip"))
            .args(["netns", "exec", &lab.server_ns])
            .arg(zpxe_bin())
            .args(["serve", "--no-database", "--config"])
            .arg(&config)
            .args(["--listen", "0.0.0.0", "--http-port", "8050"]),
        Duration::from_secs(20),
    );
    assert!(
        !started && out.contains("dhcp-port") && out.contains(":67"),
        "zpxe in proxy mode beside dnsmasq on 67 should fail to bind 67 and say so:\n{out}"
    );

    let mut server = lab.start_zpxe_with("\n[dhcp]\nmode = \"pxe-only\"\n");
    let ready = server.wait_for_log("zpxe ready", Duration::from_secs(1));
    assert!(
        ready.contains("dhcp=[]") && ready.contains(":4011"),
        "pxe-only binds 4011 and not 67: {ready}"
    );
    let mac = "52:54:00:90:00:40";
    let uuid = "a1b2c3d4-0040-4000-8000-000000000040";
    let size = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .expect("snponly.efi")
        .len();
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfEdk2Pxe,
        mac,
        uuid,
        &[
            // EDK2 asks 4011 (no proxy offer on 67 exists) and gets the loader.
            &[
                "PXE ack",
                &format!("mac={mac}"),
                &format!("uuid=\"{uuid}\""),
                "arch=\"7\"",
                "ipxe=false",
                "port=4011",
                "boot_file=\"snponly.efi\"",
            ],
            &["TFTP transfer complete", &format!("bytes={size}")],
            // snponly.efi (iPXE) gets its address from dnsmasq too and asks 4011 as iPXE.
            &[
                "PXE ack",
                &format!("mac={mac}"),
                "arch=\"7\"",
                "ipxe=true",
                "port=4011",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    let lines = server.drain_log().to_vec();
    assert!(
        !lines.iter().any(|l| l.contains("proxyDHCP offer")),
        "zpxe answered on 67 in pxe-only mode{}",
        lab.report(&mut server)
    );
    // The address came from dnsmasq, with option 60 PXEClient.
    let dnsmasq = lab.daemon_log("dnsmasq");
    assert!(
        dnsmasq.contains(&format!("DHCPACK(br0) {SERVER_NET}."))
            && dnsmasq.contains(mac)
            // "PXEClient" in hex, as dnsmasq logs what it sent.
            && dnsmasq.contains("option: 60 vendor-class  50:58:45:43:6c:69:65:6e:74"),
        "dnsmasq did not hand out the address:\n{dnsmasq}"
    );
}

/// Proves the scenarios can fail: zpxe stopped right after its first offer, the boot must
/// not reach the marker and the failure must say so.
#[test]
fn boot_fails_clearly_when_zpxe_stops_mid_boot() {
    let mut lab = Lab::new("stop", Net::Proxy);
    let mut server = lab.start_zpxe();
    let result = lab.boot(
        &mut server,
        Firmware::SeaBiosIpxeRom,
        "52:54:00:90:00:09",
        "a1b2c3d4-0009-4000-8000-000000000009",
        Duration::from_secs(90),
        Some("proxyDHCP offer"),
    );
    let why = match result {
        Ok(_) => panic!(
            "the boot reached the marker with zpxe stopped mid-boot{}",
            lab.report(&mut server)
        ),
        Err(why) => why,
    };
    eprintln!("expected failure: {why}");
    assert!(
        why.contains("zpxe is NOT running") && why.contains(MARKER),
        "unclear failure message: {why}"
    );
    let lines = server.drain_log().to_vec();
    assert!(
        !lines.iter().any(|l| l.contains("path=\"/payload.bin\"")),
        "zpxe served the payload although it was stopped first:\n{}",
        lines.join("\n")
    );
}

/// `[dhcp] mode = "server"` for the firmware tests: a pool on the bridge's subnet.
pub const SERVER_MODE: &str = "\n[dhcp]\nmode = \"server\"\nlease-time-secs = 600\n\
    [[dhcp.pool]]\nsubnet = \"10.90.0.0/24\"\nrange = [\"10.90.0.100\", \"10.90.0.150\"]\n\
    router = [\"10.90.0.1\"]\n";

/// zpxe as the only DHCP server: SeaBIOS's iPXE ROM gets its address and the script URL from
/// zpxe's own offer and ack, and boots.
#[test]
fn server_mode_bios_seabios_gets_its_address_from_zpxe_and_boots() {
    let mut lab = Lab::new("srvbios", Net::Server);
    let mut server = lab.start_zpxe_with(SERVER_MODE);
    let mac = "52:54:00:90:00:50";
    let uuid = "a1b2c3d4-0050-4000-8000-000000000050";
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::SeaBiosIpxeRom,
        mac,
        uuid,
        &[
            &[
                "DHCP ack",
                &format!("mac={mac}"),
                "ip=10.90.0.1",
                "lease_secs=600",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    let log = server.drain_log().join("\n");
    assert!(!log.contains("proxyDHCP offer"), "{log}");
}

/// zpxe as the only DHCP server: OVMF's EDK2 PXE leases an address from zpxe, takes the loader
/// from the same offer (no 4011), and snponly.efi (iPXE) gets the same address with the script.
#[test]
fn server_mode_uefi_edk2_gets_its_address_from_zpxe_and_boots() {
    let mut lab = Lab::new("srvefi", Net::Server);
    let mut server = lab.start_zpxe_with(SERVER_MODE);
    let mac = "52:54:00:90:00:51";
    let uuid = "a1b2c3d4-0051-4000-8000-000000000051";
    let size = std::fs::metadata("/usr/lib/ipxe/snponly.efi")
        .expect("snponly.efi")
        .len();
    let http = http_steps(SERVER_NET);
    lab.expect_boot(
        &mut server,
        Firmware::OvmfEdk2Pxe,
        mac,
        uuid,
        &[
            &[
                "DHCP ack",
                &format!("mac={mac}"),
                "ip=10.90.0.1",
                "boot_file=\"snponly.efi\"",
            ],
            &["TFTP transfer complete", &format!("bytes={size}")],
            &[
                "DHCP ack",
                &format!("mac={mac}"),
                "ip=10.90.0.1",
                "boot_file=\"http://10.90.0.1:8050/boot.ipxe?",
            ],
            &[&http[0], &http[1]],
            &[&http[0], &http[2]],
        ],
    );
    let log = server.drain_log().join("\n");
    assert!(
        !log.contains("PXE ack"),
        "the boot file came with the lease: {log}"
    );
}

/// UEFI HTTP Boot with zpxe as the only DHCP server: OVMF with PXE off leases its address from
/// zpxe, whose OFFER and ACK carry option 60 `HTTPClient` and the URL, fetches ipxe.efi over
/// HTTP, and iPXE gets the same address with the script URL. Read from zpxe's JSON log.
#[test]
fn server_mode_uefi_http_boot_x64_gets_address_and_url_from_zpxe() {
    let mut lab = Lab::new("srvhttp", Net::Server);
    let mut server = lab.start_zpxe_with(&format!("{SERVER_MODE}\n[log]\nformat = \"json\"\n"));
    let mac = "52:54:00:90:00:52";
    let uuid = "a1b2c3d4-0052-4000-8000-000000000052";
    let size = std::fs::metadata("/usr/lib/ipxe/ipxe.efi")
        .expect("ipxe.efi")
        .len();
    // The marker and iPXE's payload line on the serial console; the steps come from JSON.
    lab.expect_boot(&mut server, Firmware::OvmfHttpBoot, mac, uuid, &[]);
    lab.expect_http_boot_on_serial(&mut server);
    let events = events(&mut server);
    let acked = acked_boot_files(&events, mac);
    let url = http_boot_url("ipxe.efi");
    let script = acked
        .iter()
        .position(|f| f.starts_with("http://10.90.0.1:8050/boot.ipxe?"));
    assert!(
        acked.first() == Some(&url) && script > Some(0),
        "zpxe's ACKs: {acked:?} (want the HTTP Boot URL {url}, then iPXE's script){}",
        lab.report(&mut server)
    );
    let offers: Vec<_> = events
        .iter()
        .filter(|ev| text(ev, "message") == Some("DHCP offer") && text(ev, "mac") == Some(mac))
        .filter_map(|ev| text(ev, "ip"))
        .collect();
    let leased: Vec<_> = events
        .iter()
        .filter(|ev| text(ev, "message") == Some("DHCP ack") && text(ev, "mac") == Some(mac))
        .filter_map(|ev| text(ev, "ip"))
        .collect();
    assert!(
        !offers.is_empty()
            && leased.len() >= 2
            && leased
                .iter()
                .all(|ip| *ip == leased[0] && ip.starts_with("10.90.0.1")),
        "firmware and iPXE should hold one address from the pool: offers {offers:?}, acks \
         {leased:?}{}",
        lab.report(&mut server)
    );
    let gets: Vec<_> = http_requests(&events)
        .into_iter()
        .filter(|(method, ..)| method == "GET")
        .map(|(_, path, status, bytes)| (path, status, bytes))
        .collect();
    let script_get = gets
        .iter()
        .position(|(p, s, _)| p == "/boot.ipxe" && *s == 200);
    let order = in_order(
        &gets,
        &[
            ("/ipxe.efi".to_owned(), 200, size),
            ("/payload.bin".to_owned(), 200, PAYLOAD_LEN as u64),
        ],
    );
    assert!(
        order.is_ok() && script_get.is_some(),
        "HTTP requests {gets:?}: {order:?}{}",
        lab.report(&mut server)
    );
    let tftp = tftp_completed(&events);
    assert!(
        tftp.is_empty(),
        "HTTP Boot used TFTP: {tftp:?}{}",
        lab.report(&mut server)
    );
}

/// UEFI HTTP Boot in server mode through a relay: zpxe leases an address of the client's
/// subnet (the pool chosen by giaddr) with `HTTPClient` and the URL, the reply goes to the
/// relay, and the firmware fetches ipxe.efi across the router; iPXE then gets the script. The
/// relay forwards from its server-side address, so that address is in `dhcp.relays`.
#[test]
fn relayed_server_mode_uefi_http_boot_x64_gets_address_and_url_from_zpxe() {
    let mut lab = Lab::new("srvhttprl", Net::RelayedServer);
    let pool = format!(
        "\n[dhcp]\nmode = \"server\"\nlease-time-secs = 600\n\
         relays = [\"{SERVER_NET}.3\"]\n[[dhcp.pool]]\n\
         subnet = \"{CLIENT_NET}.0/24\"\nrange = [\"{CLIENT_NET}.100\", \"{CLIENT_NET}.150\"]\n\
         router = [\"{CLIENT_NET}.1\"]\n[log]\nformat = \"json\"\n"
    );
    let mut server = lab.start_zpxe_with(&pool);
    let mac = "52:54:00:91:00:52";
    let uuid = "a1b2c3d4-0152-4000-8000-000000000152";
    let size = std::fs::metadata("/usr/lib/ipxe/ipxe.efi")
        .expect("ipxe.efi")
        .len();
    lab.expect_boot(&mut server, Firmware::OvmfHttpBoot, mac, uuid, &[]);
    lab.expect_http_boot_on_serial(&mut server);
    let events = events(&mut server);
    let acks: Vec<_> = events
        .iter()
        .filter(|ev| text(ev, "message") == Some("DHCP ack") && text(ev, "mac") == Some(mac))
        .map(|ev| {
            (
                text(ev, "ip").unwrap_or("-"),
                text(ev, "relay").unwrap_or("-"),
                text(ev, "boot_file").unwrap_or("-"),
            )
        })
        .collect();
    let relay = format!("{CLIENT_NET}.1");
    let url = http_boot_url("ipxe.efi");
    assert!(
        acks.len() >= 2
            && acks
                .iter()
                .all(|(ip, r, _)| ip.starts_with(&format!("{CLIENT_NET}.")) && *r == relay)
            && acks[0].2 == url
            && acks
                .iter()
                .any(|(.., f)| f.starts_with("http://10.90.0.1:8050/boot.ipxe?")),
        "zpxe's ACKs through the relay: {acks:?}{}",
        lab.report(&mut server)
    );
    let gets: Vec<_> = http_requests(&events)
        .into_iter()
        .filter(|(method, ..)| method == "GET")
        .map(|(_, path, status, bytes)| (path, status, bytes))
        .collect();
    let order = in_order(
        &gets,
        &[
            ("/ipxe.efi".to_owned(), 200, size),
            ("/payload.bin".to_owned(), 200, PAYLOAD_LEN as u64),
        ],
    );
    assert!(
        order.is_ok(),
        "HTTP requests {gets:?}: {order:?}{}",
        lab.report(&mut server)
    );
}
