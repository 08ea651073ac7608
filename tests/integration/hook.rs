//! The request-handler hook (`boot.hook-url`): a handler in the test decides for some MACs,
//! ignores one, is too slow for another. Real DHCP DISCOVERs go to a running zpxe from a
//! loopback "relay", so the offers come back to the test's socket.
//!
//! Shown: the first DISCOVER is answered by the static policy at once (a cache miss never
//! waits) and queues one lookup however often the client asks; the next DISCOVER gets the
//! hook's loader, an iPXE DISCOVER its script URL, and the script over HTTP its entry and
//! variables; the ignored MAC gets no answer once decided; the slow MAC falls back to the
//! static policy, counted; a spray of made-up MACs reaches the handler at most at
//! `hook-rate`; a handler that is down gives the static policy, counted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use serde_json::Value;
use zpxe_engine::dhcp::options::code;
use zpxe_engine::dhcp::{DhcpOptions, DhcpRepr, MacAddr, MessageType};
use zpxe_testkit::dhcp::boot_request;

use crate::common::{Server, relay_socket};

/// A relay address of this test's own (other tests use 127.0.0.2 to .6).
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);
const TOKEN: &str = "hook-test-token-1";

const DECIDED: [u8; 6] = [0x52, 0x54, 0, 0x77, 0, 0x01];
const IGNORED: [u8; 6] = [0x52, 0x54, 0, 0x77, 0, 0x02];
const SLOW: [u8; 6] = [0x52, 0x54, 0, 0x77, 0, 0x03];

/// What the handler saw: each request's facts, and whether it carried the token.
#[derive(Default)]
struct Seen {
    facts: Vec<Value>,
    bad_token: usize,
}

/// The handler: decides for `DECIDED`, ignores `IGNORED`, sleeps past the timeout for
/// `SLOW`, answers `default` for everyone else.
struct Handler {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    script_url: String,
}

impl Handler {
    fn start() -> Handler {
        let listener = TcpListener::bind("127.0.0.1:0").expect("handler");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let script_url =
            "http://10.9.9.9:8050/special.ipxe?mac=52:54:00:77:00:01&hook=1".to_owned();
        let (s, st, url) = (Arc::clone(&seen), Arc::clone(&stop), script_url.clone());
        std::thread::spawn(move || {
            // Bounded: the test stops it, and it never runs longer than a minute.
            let until = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, url) = (Arc::clone(&s), url.clone());
                        std::thread::spawn(move || answer(conn, &s, &url));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Handler {
            addr,
            seen,
            stop,
            script_url,
        }
    }

    fn lookups_for(&self, mac: &str) -> usize {
        let seen = self.seen.lock().expect("seen");
        seen.facts.iter().filter(|f| f["mac"] == mac).count()
    }

    fn total(&self) -> usize {
        self.seen.lock().expect("seen").facts.len()
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(mut conn: TcpStream, seen: &Mutex<Seen>, script_url: &str) {
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = match eintr(|| conn.read(&mut buf)) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break (head.to_owned(), body.to_owned());
            }
        }
    };
    assert!(head.starts_with("POST /decide?site=7 HTTP/1.1"), "{head}");
    let facts: Value = serde_json::from_str(&body).expect("facts JSON");
    let mac = facts["mac"].as_str().unwrap_or_default().to_owned();
    {
        let mut s = seen.lock().expect("seen");
        if !head.contains(&format!("Authorization: Bearer {TOKEN}")) {
            s.bad_token += 1;
        }
        s.facts.push(facts);
    }
    let decision = match mac.as_str() {
        "52:54:00:77:00:01" => serde_json::json!({
            "action": "boot",
            "loader": "hook/special.efi",
            "script-url": script_url,
            "entry": "local",
            "variables": {"site": "lab7", "role": "builder"},
        }),
        "52:54:00:77:00:02" => serde_json::json!({"action": "ignore"}),
        "52:54:00:77:00:03" => {
            std::thread::sleep(Duration::from_millis(1500));
            serde_json::json!({"action": "boot", "loader": "late.efi"})
        }
        _ => serde_json::json!({"action": "default"}),
    };
    let body = decision.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A firmware DISCOVER (x64 UEFI, or iPXE when `ipxe`) relayed from [`RELAY`].
fn discover(mac: [u8; 6], xid: u32, ipxe: bool) -> Vec<u8> {
    let options = DhcpOptions {
        message_type: Some(MessageType::Discover),
        vendor_class: Some(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
        client_arch: vec![7],
        user_class: ipxe.then(|| b"iPXE".to_vec()),
        parameter_request_list: Some(vec![code::VENDOR_SPECIFIC, code::BOOTFILE_NAME]),
        ..Default::default()
    };
    boot_request(xid, MacAddr(mac), RELAY, options).to_bytes()
}

/// The relay's socket: on the server's DHCP port at the relay's address, as relays listen.
fn relay(server: &Server) -> UdpSocket {
    let s = relay_socket(SocketAddr::new(RELAY.into(), server.dhcp.port()));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s
}

/// The offer's boot file for one DISCOVER, `None` after `wait` of silence.
fn offer(sock: &UdpSocket, server: &Server, msg: &[u8], wait: Duration) -> Option<String> {
    let xid = DhcpRepr::parse_bytes(msg).expect("own request").xid;
    sock.send_to(msg, server.dhcp).expect("send");
    let until = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        let Ok((n, _)) = eintr(|| sock.recv_from(&mut buf)) else {
            continue;
        };
        let reply = DhcpRepr::parse_bytes(&buf[..n]).expect("reply parses");
        if reply.xid == xid {
            let file = reply
                .options
                .bootfile_name
                .clone()
                .filter(|_| reply.boot_file.is_empty())
                .unwrap_or(reply.boot_file);
            return Some(String::from_utf8_lossy(&file).into_owned());
        }
    }
    None
}

fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// zpxe's counters, from `/metrics` on the web port.
fn metrics(server: &Server) -> HashMap<String, u64> {
    let (status, body) = http_get(server.web, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| l.starts_with("zpxe_hook_"))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.trim_start_matches("zpxe_").to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Waits (up to 5 s) until `counter` reaches `at_least`.
fn wait_counter(server: &Server, counter: &str, at_least: u64) -> HashMap<String, u64> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(server);
        if m.get(counter).copied().unwrap_or(0) >= at_least {
            return m;
        }
        assert!(
            Instant::now() < until,
            "{counter} stayed below {at_least}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

const STATIC_LOADER: &str = "ipxe.efi";

fn config(hook_url: &str, rate: u32) -> String {
    format!(
        r#"
[boot]
hook-url = "{hook_url}"
hook-token = "{TOKEN}"
hook-timeout-ms = 300
hook-cache-ttl-s = 300
hook-rate = {rate}

[menu]
default = "shell"

[[menu.entries]]
id = "shell"
label = "iPXE shell"
kind = {{ type = "shell" }}

[[menu.entries]]
id = "local"
label = "Local disk"
kind = {{ type = "exit" }}
"#
    )
}

#[test]
fn hook_decides_ignores_and_falls_back_without_making_dhcp_wait() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let cfg = dir.path().join("zpxe.toml");
    let handler = Handler::start();
    std::fs::write(
        &cfg,
        config(&format!("http://{}/decide?site=7", handler.addr), 20),
    )
    .expect("config");
    let server = Server::start(&root, &["--config", cfg.to_str().expect("utf-8")]);
    let sock = relay(&server);
    let quick = Duration::from_secs(2);

    // A miss: the static policy answers at once, and asking again before the handler has
    // answered queues no second lookup.
    let first = offer(&sock, &server, &discover(DECIDED, 1, false), quick);
    assert_eq!(first.as_deref(), Some(STATIC_LOADER));
    let again = offer(&sock, &server, &discover(DECIDED, 2, false), quick);
    assert!(
        again.is_some(),
        "a pending lookup must not silence the client"
    );
    let m = wait_counter(&server, "hook_decisions_total", 1);
    assert_eq!(handler.lookups_for("52:54:00:77:00:01"), 1, "{m:?}");
    // The firmware's retry gets the handler's loader; its iPXE the script URL.
    let retry = offer(&sock, &server, &discover(DECIDED, 3, false), quick);
    assert_eq!(retry.as_deref(), Some("hook/special.efi"));
    let ipxe = offer(&sock, &server, &discover(DECIDED, 4, true), quick);
    assert_eq!(ipxe.as_deref(), Some(handler.script_url.as_str()));
    // The facts the handler got, with the bearer token.
    {
        let seen = handler.seen.lock().expect("seen");
        assert_eq!(seen.bad_token, 0);
        let f = &seen.facts[0];
        assert_eq!(f["mac"], "52:54:00:77:00:01");
        assert_eq!(f["arch"], 7);
        assert_eq!(f["relay"], "127.0.0.77");
        assert_eq!(f["vendor-class"], "PXEClient:Arch:00007:UNDI:003016");
        assert_eq!(f["message"], "DISCOVER");
        assert_eq!(f["ipxe"], false);
    }
    // The script over HTTP: the decision's entry, its variables set first.
    let (status, script) = http_get(
        server.http,
        "/boot.ipxe?mac=52:54:00:77:00:01&uuid=&arch=x86_64",
    );
    assert_eq!(status, 200, "{script}");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains("set site lab7\n"), "{script}");
    assert!(script.contains("set role builder\n"), "{script}");
    assert!(
        script.contains("exit"),
        "entry local boots the disk: {script}"
    );

    // Ignored: answered by the static policy until the handler says so, then silence; its
    // script is refused.
    let first = offer(&sock, &server, &discover(IGNORED, 10, false), quick);
    assert_eq!(first.as_deref(), Some(STATIC_LOADER));
    wait_counter(&server, "hook_decisions_total", 2);
    let silent = offer(
        &sock,
        &server,
        &discover(IGNORED, 11, false),
        Duration::from_millis(1000),
    );
    assert_eq!(silent, None, "the ignored client was answered");
    let (status, _) = http_get(server.http, "/boot.ipxe?mac=52:54:00:77:00:02");
    assert_eq!(status, 403);

    // Slow: past hook-timeout-ms the static policy stays, counted, and the client is not
    // asked about again at once.
    let first = offer(&sock, &server, &discover(SLOW, 20, false), quick);
    assert_eq!(first.as_deref(), Some(STATIC_LOADER));
    let m = wait_counter(&server, "hook_timeouts_total", 1);
    assert_eq!(m["hook_timeouts_total"], 1, "{m:?}");
    let retry = offer(&sock, &server, &discover(SLOW, 21, false), quick);
    assert_eq!(retry.as_deref(), Some(STATIC_LOADER));
    std::thread::sleep(Duration::from_millis(1500));
    let retry = offer(&sock, &server, &discover(SLOW, 22, false), quick);
    assert_eq!(
        retry.as_deref(),
        Some(STATIC_LOADER),
        "the late answer is not taken"
    );
    assert_eq!(handler.lookups_for("52:54:00:77:00:03"), 1);

    // A spray of made-up MACs: every one answered by the static policy, the handler asked
    // at most at hook-rate (20/s, burst 20), the rest counted as skipped.
    let before = handler.total();
    let start = Instant::now();
    let spray = 300u32;
    for i in 0..spray {
        let mac = [0x02, 0x77, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        sock.send_to(&discover(mac, 1000 + i, false), server.dhcp)
            .expect("send");
    }
    let mut answered = 0u32;
    let mut buf = [0u8; 1500];
    let until = Instant::now() + Duration::from_secs(5);
    while answered < spray && Instant::now() < until {
        if let Ok((n, _)) = eintr(|| sock.recv_from(&mut buf)) {
            let r = DhcpRepr::parse_bytes(&buf[..n]).expect("reply");
            if (1000..1000 + spray).contains(&r.xid) {
                answered += 1;
            }
        }
    }
    let spray_secs = start.elapsed().as_secs_f64();
    let m = wait_counter(&server, "hook_rate_limited_total", 1);
    std::thread::sleep(Duration::from_millis(300));
    let asked = handler.total() - before;
    let allowed = 20.0 + 20.0 * spray_secs;
    assert_eq!(
        answered, spray,
        "the spray's DISCOVERs must all be answered"
    );
    assert!(
        (asked as f64) <= allowed + 1.0,
        "the handler was asked {asked} times in {spray_secs:.2} s (at most {allowed:.0})"
    );
    let skipped = m["hook_rate_limited_total"] + m.get("hook_queue_dropped_total").unwrap_or(&0);
    assert!(
        skipped >= u64::from(spray) - allowed as u64 - 1,
        "only {skipped} skipped: {m:?}"
    );
    eprintln!(
        "spray: {spray} DISCOVERs in {spray_secs:.2} s, all answered; handler asked {asked} \
         times, {skipped} lookups skipped; {m:?}"
    );
}

#[test]
fn a_handler_that_is_down_gives_the_static_policy_counted() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    // A port nobody listens on: bound, then closed.
    let dead = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let cfg = dir.path().join("zpxe.toml");
    std::fs::write(&cfg, config(&format!("http://{dead}/decide"), 20)).expect("config");
    let mut server = Server::start(&root, &["--config", cfg.to_str().expect("utf-8")]);
    let sock = relay(&server);
    let quick = Duration::from_secs(2);
    let first = offer(&sock, &server, &discover(DECIDED, 1, false), quick);
    assert_eq!(first.as_deref(), Some(STATIC_LOADER));
    let m = wait_counter(&server, "hook_errors_total", 1);
    assert_eq!(m["hook_decisions_total"], 0, "{m:?}");
    let retry = offer(&sock, &server, &discover(DECIDED, 2, false), quick);
    assert_eq!(retry.as_deref(), Some(STATIC_LOADER));
    server.wait_for_log("hook lookup failed", Duration::from_secs(2));
}

#[test]
fn hook_settings_are_checked_at_their_positions() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("zpxe.toml");
    std::fs::write(
        &cfg,
        "[boot]\nhook-url = \"https://h/x\"\nhook-rate = 0\nhook-bogus = 1\n",
    )
    .expect("config");
    let out = std::process::Command::new(crate::common::zpxe_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .expect("zpxe check");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("hook-bogus"), "unknown key: {text}");
    std::fs::write(&cfg, "[boot]\nhook-url = \"https://h/x\"\nhook-rate = 0\n").expect("config");
    let out = std::process::Command::new(crate::common::zpxe_bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .expect("zpxe check");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("zpxe.toml:2:12") && text.contains("https"),
        "{text}"
    );
    assert!(
        text.contains("zpxe.toml:3:13") && text.contains("hook-rate"),
        "{text}"
    );
}

/// `zpxe explain --json` for an x64 UEFI DISCOVER relayed from [`RELAY`]: the JSON and how
/// long the command took.
fn explain_json(cfg: &std::path::Path, mac: &str) -> (Value, Duration) {
    let started = Instant::now();
    let out = std::process::Command::new(crate::common::zpxe_bin())
        .args(["explain", "--json", "-c"])
        .arg(cfg)
        .args(["--mac", mac, "--arch", "7", "--relay", &RELAY.to_string()])
        .args(["--server", "127.0.0.1"])
        .output()
        .expect("zpxe explain");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).expect("JSON"), took)
}

#[test]
fn explain_asks_the_hook_and_shows_its_decision() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let handler = Handler::start();
    let url = format!("http://{}/decide?site=7", handler.addr);
    let cfg = dir.path().join("zpxe.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nroot = {:?}\n{}",
            root.display().to_string(),
            config(&url, 20)
        ),
    )
    .expect("config");

    // Decided: the hook's loader is the reply's, and the hook is named as the decider.
    let (e, _) = explain_json(&cfg, "52:54:00:77:00:01");
    assert_eq!(handler.lookups_for("52:54:00:77:00:01"), 1, "asked once");
    assert_eq!(e["hook"]["action"], "boot", "{e:#}");
    assert_eq!(e["hook"]["loader"], "hook/special.efi", "{e:#}");
    assert_eq!(e["hook"]["entry"], "local", "{e:#}");
    assert_eq!(e["hook"]["variables"]["site"], "lab7", "{e:#}");
    assert_eq!(e["hook"]["asked"]["mac"], "52:54:00:77:00:01", "{e:#}");
    assert_eq!(e["hook"]["asked"]["relay"], RELAY.to_string(), "{e:#}");
    assert_eq!(e["reply"]["file"], "hook/special.efi", "{e:#}");
    assert_eq!(e["decision"]["by"], format!("hook {url}"), "{e:#}");
    // Ignored: no reply, decided by the hook.
    let (e, _) = explain_json(&cfg, "52:54:00:77:00:02");
    assert_eq!(e["hook"]["action"], "ignore", "{e:#}");
    assert!(e["reply"].is_null(), "{e:#}");
    assert_eq!(e["decision"]["by"], format!("hook {url}"), "{e:#}");
    // Slower than hook-timeout-ms (300): the static policy, with the reason, without waiting
    // for the handler's 1.5 s.
    let (e, took) = explain_json(&cfg, "52:54:00:77:00:03");
    assert_eq!(e["hook"]["action"], "failed", "{e:#}");
    assert!(
        e["hook"]["error"]
            .as_str()
            .is_some_and(|m| m.contains("hook-timeout-ms")),
        "{e:#}"
    );
    assert_eq!(e["reply"]["file"], STATIC_LOADER, "{e:#}");
    assert_eq!(e["decision"]["by"], "boot", "{e:#}");
    assert!(took < Duration::from_millis(1400), "explain took {took:?}");
    // `default`: the static policy, the hook's answer shown.
    let (e, _) = explain_json(&cfg, "52:54:00:77:00:09");
    assert_eq!(e["hook"]["action"], "default", "{e:#}");
    assert_eq!(e["reply"]["file"], STATIC_LOADER, "{e:#}");
    // The text names it too.
    let out = std::process::Command::new(crate::common::zpxe_bin())
        .args(["explain", "-c"])
        .arg(&cfg)
        .args(["--mac", "52:54:00:77:00:01", "--arch", "7"])
        .args(["--relay", &RELAY.to_string(), "--server", "127.0.0.1"])
        .output()
        .expect("zpxe explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "hook {url} answered boot: loader \"hook/special.efi\", script-url"
        )),
        "{text}"
    );
    assert!(
        text.contains("(decided by hook") || text.contains("from hook (loader"),
        "{text}"
    );
}
