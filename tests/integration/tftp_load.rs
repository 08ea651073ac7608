//! TFTP under loss (tc netem between namespaces) and under load (1,000 transfers at once).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{Server, pattern_file, run, zpxe_bin};
use crate::netns::NetPair;

fn summary(json: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(json).expect("loadgen json");
    serde_json::from_str(&text).expect("json")
}

#[test]
fn fifty_transfers_survive_loss_duplication_and_reordering_at_every_window_size() {
    let pair = NetPair::new("loss");
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("loader.efi"), 256 * 1024 + 77, 31);
    // All fifty clients share the client namespace's one address: lift the per-address cap.
    let config = root.path().join("zpxe.toml");
    std::fs::write(&config, "[tftp]\nmax-transfers-per-client = 64\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    // Per-datagram loss: with GSO a whole segmented send would be dropped as one.
    let _server = Server::start_in_ns(
        &pair.server,
        &pair.server_ip,
        root.path(),
        &["--no-dhcp", "--no-gso", "--config", &config],
    );
    pair.impair(5, 1, 10);
    let out = tempfile::tempdir().expect("tmp");
    for window in ["1", "4", "64"] {
        let json = out.path().join(format!("w{window}.json"));
        let mut cmd = NetPair::command(&pair.client, zpxe_bin());
        cmd.args([
            "loadgen",
            "--only",
            "tftp",
            "--file",
            "loader.efi",
            "--quiet",
        ])
        .args(["--server", &pair.server_ip, "--tftp-port", "69"])
        .args(["--clients", "50", "--profile", "ipxe", "--limit", "240"])
        .args(["--tftp-blksize", "1468", "--tftp-windowsize", window])
        .arg("--reference-root")
        .arg(root.path())
        .arg("--json")
        .arg(&json);
        let (ok, log) = run(&mut cmd, Duration::from_secs(300));
        assert!(ok, "windowsize {window}: {log}");
        let v = summary(&json);
        assert_eq!(v["booted"], 50, "windowsize {window}: {log}");
        assert_eq!(v["byte_errors"], 0);
    }
}

/// Peak RssAnon of a process, sampled until `stop`.
fn sample_rss_anon(
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("RssAnon:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn a_thousand_transfers_at_once_in_little_memory() {
    let root = tempfile::tempdir().expect("tmp");
    pattern_file(&root.path().join("undionly.kpxe"), 1024 * 1024, 41);
    let server = Server::start(root.path(), &["--no-dhcp", "--no-http", "--no-web"]);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_rss_anon(server.pid(), Arc::clone(&stop), Arc::clone(&peak));
    let out = tempfile::tempdir().expect("tmp");
    let json = out.path().join("storm.json");
    let mut cmd = std::process::Command::new(zpxe_bin());
    cmd.args([
        "loadgen",
        "--only",
        "tftp",
        "--file",
        "undionly.kpxe",
        "--quiet",
    ])
    .args([
        "--server",
        "127.0.0.1",
        "--tftp-port",
        &server.tftp.port().to_string(),
    ])
    .args(["--clients", "1000", "--profile", "mix", "--limit", "240"])
    .arg("--reference-root")
    .arg(root.path())
    .arg("--json")
    .arg(&json);
    let (ok, log) = run(&mut cmd, Duration::from_secs(300));
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert!(ok, "{log}");
    let v = summary(&json);
    assert_eq!(v["booted"], 1000, "{log}");
    assert_eq!(v["byte_errors"], 0);
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    eprintln!("server peak RssAnon during 1000 transfers: {peak_mib:.1} MiB");
    assert!(peak_mib > 0.0, "sampled the server");
    assert!(
        peak_mib < 64.0,
        "server anonymous memory {peak_mib:.1} MiB >= 64 MiB"
    );
}
