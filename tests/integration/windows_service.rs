//! zpxe's MSI and Windows service under Wine: the MSI built by dist/windows/build-msi.sh
//! (wixl) installs silently, the service it registers runs (`sc query`), serves a windowed
//! TFTP download and an HTTP range byte-exact, drains on `sc stop` (the download under way
//! finishes byte-exact while the service reports STOP_PENDING), and uninstalling removes it.
//!
//! Each run works in its own copy of the server-edition prefix (installing changes the
//! prefix: services, files, the installer's records), so other Windows tests are untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    WINE, curl_bytes, free_tcp_port, free_udp_port, pattern_file, require, run, wine_path,
};
use crate::drain::{finish_body, get, wait_until_refused};

/// The Windows build and the prepared prefixes (tests/run-all.sh sets both).
fn windows_build() -> (PathBuf, PathBuf) {
    let need = |var: &str| {
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            panic!("this test needs ${var}: run tests/run-all.sh, which builds and sets it")
        })
    };
    let exe = need("ZPXE_WIN_BIN");
    assert!(exe.is_file(), "{} is not a file", exe.display());
    assert!(Path::new(WINE).is_file(), "{WINE} is missing (wine64)");
    (exe, need("ZPXE_WINE_CACHE"))
}

/// A private copy of a Wine prefix; its wineserver (and so every program and service in the
/// prefix, all started by this test) ends when it drops.
struct Prefix {
    dir: tempfile::TempDir,
    /// The service's log (logs\zpxe.log beside its configuration).
    log: PathBuf,
}

impl Prefix {
    fn copy_of(template: &Path, log: PathBuf) -> Prefix {
        let dir = tempfile::tempdir().expect("tmp");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", template.display()))
            .arg(dir.path())
            .status()
            .expect("cp")
            .success();
        assert!(ok, "copying the Wine prefix {} failed", template.display());
        let prefix = Prefix { dir, log };
        // A persistent wineserver: otherwise it ends with the last program a test runs, and
        // the service with it. Its output goes nowhere: it outlives every call below.
        let ok = Command::new("/usr/lib/wine/wineserver")
            .arg("-p")
            .env("WINEPREFIX", prefix.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("wineserver")
            .success();
        assert!(ok, "wineserver -p failed");
        prefix
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A Windows program run by Wine in this prefix: (exit status 0, stdout + stderr). The
    /// output goes to a file, not a pipe: Wine's services (and the zpxe service) may inherit
    /// it and keep a pipe open long after the program ends.
    fn wine(&self, args: &[&str], limit: Duration) -> (bool, String) {
        let out = tempfile::NamedTempFile::new().expect("tmp");
        let mut child = Command::new(WINE)
            .args(args)
            .env("WINEPREFIX", self.path())
            .env("WINEDEBUG", "-all")
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen"))
            .stderr(out.reopen().expect("reopen"))
            .spawn()
            .expect("spawn wine");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = String::from_utf8_lossy(&std::fs::read(out.path()).expect("read")).into_owned();
        match status {
            Some(s) => (s.success(), text),
            None => (
                false,
                format!("wine {args:?} timed out after {limit:?}\n{text}"),
            ),
        }
    }

    /// `sc query zpxe`.
    fn query(&self) -> String {
        self.wine(&["sc", "query", "zpxe"], Duration::from_secs(30))
            .1
    }

    /// Waits until `sc query zpxe` says `state`.
    fn wait_for_state(&self, state: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.query();
            if out.contains(state) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the service is not {state} after {within:?}:\n{out}\nservice log:\n{}",
                self.service_log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn drive_c(&self) -> PathBuf {
        self.path().join("drive_c")
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no service log: {e})"))
    }
}

/// The MSI's deferred actions sit inside the install script, in order: the firewall rules go
/// after the service stopped and before its files, the configuration runs between installing
/// and starting the service. (wixl numbers a `Before=` custom action after the last action it
/// placed, outside the script, where Windows refuses a deferred one.)
fn check_sequence(msi: &Path) {
    let out = Command::new(require("msiinfo"))
        .args(["export"])
        .arg(msi)
        .arg("InstallExecuteSequence")
        .output()
        .expect("msiinfo");
    assert!(out.status.success(), "msiinfo export failed");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let seq = |action: &str| -> u32 {
        table
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() == 3 && f[0] == action).then(|| f[2].trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {action} in\n{table}"))
    };
    let order = |actions: &[&str]| {
        let numbers: Vec<u32> = actions.iter().map(|a| seq(a)).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{actions:?} are numbered {numbers:?}:\n{table}"
        );
    };
    order(&[
        "InstallInitialize",
        "StopServices",
        "DeleteServices",
        "RemoveFirewallRules",
        "RemoveFiles",
        "InstallFiles",
        "InstallServices",
        "ConfigureService",
        "StartServices",
        "InstallFinalize",
    ]);
}

/// The value of `NAME : value` in `sc query` output.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/lib/wine/wineserver")
            .arg("-k")
            .env("WINEPREFIX", self.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn msi_installs_a_service_that_serves_drains_and_uninstalls() {
    let (exe, cache) = windows_build();
    require("wixl");
    let work = tempfile::tempdir().expect("tmp");
    let msi = work.path().join("zpxe.msi");
    let (ok, out) = run(
        Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dist/windows/build-msi.sh"
        ))
        .arg(&exe)
        .arg(&msi),
        Duration::from_secs(120),
    );
    assert!(ok, "build-msi.sh: {out}");
    check_sequence(&msi);

    // The service's configuration: free loopback ports, no DHCP (the host's 67 is not ours).
    let root = work.path().join("root");
    let wim = pattern_file(&root.join("sources/boot.wim"), (9 << 20) + 5, 21);
    let big = pattern_file(&root.join("big.bin"), 64 << 20, 22);
    let (tftp, http, web) = (free_udp_port(), free_tcp_port(), free_tcp_port());
    let config = work.path().join("zpxe.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nroot = '{}'\nlisten = [\"127.0.0.1\"]\n\
             [ports]\ntftp = {tftp}\nhttp = {http}\nweb = {web}\n\
             [services]\ndhcp = false\n",
            wine_path(&root)
        ),
    )
    .expect("write config");

    let prefix = Prefix::copy_of(&cache.join("server"), work.path().join("logs/zpxe.log"));
    let log = work.path().join("install.log");
    let (ok, out) = prefix.wine(
        &[
            "msiexec",
            "/i",
            &wine_path(&msi),
            "/qn",
            &format!("CONFIG={}", wine_path(&config)),
            "/l*v",
            &wine_path(&log),
        ],
        Duration::from_secs(180),
    );
    let install_log = || {
        std::fs::read(&log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    assert!(ok, "msiexec /i: {out}\n{}", install_log());
    let c = prefix.drive_c();
    assert!(c.join("Program Files/zpxe/zpxe.exe").is_file());
    let example = std::fs::read_to_string(c.join("ProgramData/zpxe/zpxe.toml")).expect("config");
    assert!(
        example.contains(r"root = 'C:\ProgramData\zpxe\root'"),
        "{example}"
    );
    assert!(c.join("ProgramData/zpxe/root").is_dir());

    prefix.wait_for_state("RUNNING", Duration::from_secs(60));
    // What the MSI registered (Wine's sc has no `qc`; its SCM keeps services in the registry).
    let (ok, reg) = prefix.wine(
        &[
            "reg",
            "query",
            r"HKLM\System\CurrentControlSet\Services\zpxe",
        ],
        Duration::from_secs(30),
    );
    assert!(ok, "{reg}");
    assert!(reg.contains(r"C:\Program Files\zpxe\zpxe.exe"), "{reg}");
    let args = format!(r#"service run --config "{}""#, wine_path(&config));
    assert!(reg.contains(&args), "{reg}");
    assert!(reg.contains(r"NT AUTHORITY\LocalService"), "{reg}");

    // The service serves: an HTTP range and a windowed TFTP download, byte-exact.
    let url = format!("http://127.0.0.1:{http}/sources/boot.wim");
    let (a, b) = ((1 << 20) + 3, (7 << 20) + 11);
    assert!(
        curl_bytes(&["-r", &format!("{a}-{b}"), &url]) == wim[a..=b],
        "HTTP range differs"
    );
    let got = work.path().join("wim.tftp");
    let (ok, out) = run(
        Command::new(require("atftp"))
            .args(["--option", "blksize 1468", "--option", "windowsize 16"])
            .args(["-g", "-r", "sources/boot.wim", "-l"])
            .arg(&got)
            .args(["127.0.0.1", &tftp.to_string()]),
        Duration::from_secs(60),
    );
    assert!(ok, "atftp: {out}");
    assert!(
        std::fs::read(&got).expect("read") == wim,
        "TFTP body differs"
    );

    // `sc stop` drains: the download under way finishes byte-exact, the listener closes, and
    // the service waits in STOP_PENDING until the download ends.
    let http_addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let (mut slow, head, body) = get(http_addr, "big.bin");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, out) = prefix.wine(&["sc", "stop", "zpxe"], Duration::from_secs(30));
    assert!(out.contains("STOP_PENDING"), "sc stop: {out}");
    wait_until_refused(http_addr);
    let pending = prefix.query();
    assert!(
        pending.contains("STOP_PENDING"),
        "while draining: {pending}"
    );
    finish_body(&mut slow, body, &big);
    let stopped = prefix.wait_for_state("STOPPED", Duration::from_secs(30));
    assert_eq!(field(&stopped, "WIN32_EXIT_CODE"), "0", "{stopped}");
    let service_log = prefix.service_log();
    assert!(service_log.contains("draining"), "{service_log}");

    // Uninstall removes the service and the files.
    let (ok, out) = prefix.wine(
        &["msiexec", "/x", &wine_path(&msi), "/qn"],
        Duration::from_secs(180),
    );
    assert!(ok, "msiexec /x: {out}");
    // Wine's `sc query` of a missing service fails and prints nothing.
    let (found, gone) = prefix.wine(&["sc", "query", "zpxe"], Duration::from_secs(30));
    assert!(
        !found && !gone.contains("SERVICE_NAME"),
        "the service is still there: {gone}"
    );
    assert!(!c.join("Program Files/zpxe/zpxe.exe").exists());
}
