//! zpxe's MSI and Windows service under Wine: the MSI built by dist/windows/build-msi.sh
//! (wixl) installs silently, the service it registers runs (`sc query`), serves a windowed
//! TFTP download and an HTTP range byte-exact, drains on `sc stop` (the download under way
//! finishes byte-exact while the service reports STOP_PENDING), and uninstalling removes it.
//! Between serving and stopping: the event log source is registered and written without an
//! error, a parameter change (`zpxe service reload`, what `sc control zpxe paramchange` sends)
//! and `zpxe reload` (the control pipe) reload the menu without a restart, with the exit codes
//! of Linux's `zpxe reload`, and the service's log rotates at `log.max-size`.
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

/// The service's `log.max-size` and `log.keep`: small, so that the test sees it rotate.
const LOG_MAX: u64 = 1024;
const LOG_KEEP: u32 = 2;

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

    /// The service's log, rotated files first (oldest to newest).
    fn service_log(&self) -> String {
        let mut text = String::new();
        for n in (1..=LOG_KEEP).rev() {
            let mut name = self.log.as_os_str().to_owned();
            name.push(format!(".{n}"));
            text.push_str(&std::fs::read_to_string(name).unwrap_or_default());
        }
        text + &std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(no service log: {e})"))
    }
}

/// The MSI's deferred actions sit inside the install script, in order: the cleanup (firewall
/// rules, event source) goes after the service stopped and before its files, the configuration
/// runs between installing and starting the service. (wixl numbers a `Before=` custom action after the last action it
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
        "ZpxeCleanup",
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
    // A drive letter and backslashes, as a Windows admin writes them.
    let config_text = |title: &str, http: u16| {
        format!(
            "[server]\nroot = '{}'\nlisten = [\"127.0.0.1\"]\n\
             [ports]\ntftp = {tftp}\nhttp = {http}\nweb = {web}\n\
             [services]\ndhcp = false\n\
             [log]\nmax-size = {LOG_MAX}\nkeep = {LOG_KEEP}\n\
             [menu]\ntitle = \"{title}\"\n",
            wine_path(&root)
        )
    };
    std::fs::write(&config, config_text("first menu", http)).expect("write config");

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
    // The service opened its event source and wrote "started" without an error (checked
    // before the log rotates these lines away).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !prefix.service_log().contains("service running") {
        assert!(Instant::now() < deadline, "{}", prefix.service_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = prefix.service_log();
    assert!(
        started.contains("events go to the Application event log"),
        "{started}"
    );
    assert!(
        !started.contains("could not write to the event log"),
        "{started}"
    );
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

    // The event log source: `zpxe service configure` (the MSI's action) registered it, and the
    // service writes to it without an error (Wine keeps no Application log to read back).
    let (ok, reg) = prefix.wine(
        &[
            "reg",
            "query",
            r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\zpxe",
        ],
        Duration::from_secs(30),
    );
    assert!(ok, "no event log source: {reg}");
    assert!(reg.contains("EventMessageFile"), "{reg}");
    assert!(reg.contains("REG_EXPAND_SZ"), "{reg}");
    assert!(reg.contains("EventLogMessages.dll"), "{reg}");
    assert!(reg.contains("TypesSupported"), "{reg}");

    // Reloads without a restart: the menu script follows the file.
    let menu = format!("http://127.0.0.1:{http}/menu.ipxe");
    let script = || String::from_utf8_lossy(&curl_bytes(&[&menu])).into_owned();
    let first = script();
    assert!(first.contains("first menu"), "{first}");
    let exe_in_prefix = r"C:\Program Files\zpxe\zpxe.exe";
    // A parameter change, as `sc control zpxe paramchange` sends it (Wine's sc has no
    // `control`): the service reloads on its own thread; the script changes.
    std::fs::write(&config, config_text("second menu", http)).expect("write config");
    let (ok, out) = prefix.wine(
        &[exe_in_prefix, "service", "reload"],
        Duration::from_secs(30),
    );
    assert!(ok, "zpxe service reload: {out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = script();
        if now.contains("second menu") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paramchange did not reload the menu:\n{now}\nservice log:\n{}",
            prefix.service_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `zpxe reload` over the control pipe, with Linux's exit codes: 0 reloaded ...
    let reload = || {
        let out = tempfile::NamedTempFile::new().expect("tmp");
        let status = Command::new(WINE)
            .args([exe_in_prefix, "reload"])
            .env("WINEPREFIX", prefix.path())
            .env("WINEDEBUG", "-all")
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen"))
            .stderr(out.reopen().expect("reopen"))
            .status()
            .expect("wine zpxe reload");
        let text = String::from_utf8_lossy(&std::fs::read(out.path()).expect("read")).into_owned();
        (status.code(), text)
    };
    std::fs::write(&config, config_text("third menu", http)).expect("write config");
    let (code, out) = reload();
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("configuration reloaded: generation 3"),
        "{out}"
    );
    assert!(script().contains("third menu"));
    // ... 2 refused, every problem with its place, and the running menu stays ...
    std::fs::write(&config, "[server]\nthreads = \"many\"\n[menu]\ntitle = 5\n")
        .expect("write config");
    let (code, out) = reload();
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("zpxe.toml:2:"), "{out}");
    assert!(out.contains("zpxe.toml:4:"), "{out}");
    assert!(script().contains("third menu"));
    // ... 3 applied, but a changed port needs a restart (and keeps serving where it was).
    let other_http = free_tcp_port();
    std::fs::write(&config, config_text("fourth menu", other_http)).expect("write config");
    let (code, out) = reload();
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("ports.http"), "{out}");
    assert!(script().contains("fourth menu"));
    std::fs::write(&config, config_text("fourth menu", http)).expect("write config");

    // The log rotated at max-size: the current file and `keep` older ones, none past max-size
    // (a file is rotated before the line that would cross it).
    let log_dir = work.path().join("logs");
    let mut names: Vec<String> = std::fs::read_dir(&log_dir)
        .expect("logs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["zpxe.log", "zpxe.log.1", "zpxe.log.2"], "{names:?}");
    for n in &names {
        let len = std::fs::metadata(log_dir.join(n)).expect("size").len();
        assert!(len <= LOG_MAX, "{n}: {len} bytes");
    }
    let service_log = prefix.service_log();
    assert!(
        service_log.contains("configuration reloaded"),
        "{service_log}"
    );
    assert!(
        !service_log.contains("could not write to the event log"),
        "{service_log}"
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
    // ... and the event log source (`zpxe service cleanup`, the MSI's last deferred action).
    let (found, key) = prefix.wine(
        &[
            "reg",
            "query",
            r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\zpxe",
        ],
        Duration::from_secs(30),
    );
    assert!(
        !found && !key.contains("EventMessageFile"),
        "the event source is still registered: {key}"
    );
}
