//! The web service's security and the machine registry API (issues 14 and 16): records added
//! through `/api/v1/machines` change the machine's next proxyDHCP answer and iPXE script,
//! changes need the bearer token, reads need `web.allow`, records survive a restart, boot-once
//! machines get `exit` once deployed, and `zpxe machines import` names the bad CSV lines.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use zpxe_testkit::io::eintr;

use serde_json::{Value, json};
use zpxe_engine::dhcp::{DhcpOptions, DhcpRepr, MacAddr, MessageType};
use zpxe_testkit::dhcp::boot_request;

use crate::common::{Server, require, run, zpxe_bin};

const TOKEN: &str = "correct-horse-battery-staple";

/// One HTTP request: status, head and body.
fn http(
    to: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// A token file only its owner reads, and a configuration naming it (plus `extra` TOML).
fn config(dir: &Path, token: bool, extra: &str) -> String {
    let mut text = String::new();
    if token {
        let f = dir.join("token");
        std::fs::write(&f, format!("{TOKEN}\n")).expect("token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        text.push_str(&format!(
            "[web]\ntoken-file = {:?}\n",
            f.display().to_string()
        ));
    }
    text.push_str(extra);
    text.push_str(
        "\n[[menu.entries]]\nid = \"local\"\nlabel = \"Local disk\"\nkind = { type = \"exit\" }\n\
         [[menu.entries]]\nid = \"shell\"\nlabel = \"Shell\"\nkind = { type = \"shell\" }\n",
    );
    let path = dir.join("zpxe.toml");
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

/// The boot file of the 4011 ACK zpxe sends an x64 UEFI PXE ROM with `mac`.
fn pxe_boot_file(server: &Server, mac: MacAddr, xid: u32) -> String {
    let options = DhcpOptions {
        message_type: Some(MessageType::Request),
        vendor_class: Some(b"PXEClient:Arch:00007:UNDI:003016".to_vec()),
        client_arch: vec![7],
        ..DhcpOptions::default()
    };
    let request = boot_request(xid, mac, Ipv4Addr::UNSPECIFIED, options);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    socket
        .send_to(&request.to_bytes(), server.pxe)
        .expect("send");
    let mut buf = [0u8; 2048];
    let n = eintr(|| socket.recv(&mut buf)).expect("no 4011 answer");
    let reply = DhcpRepr::parse_bytes(&buf[..n]).expect("parse reply");
    assert_eq!(reply.xid, xid);
    String::from_utf8(reply.boot_file).expect("utf8")
}

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0xaa, 0x00, last])
}

#[test]
fn a_machine_added_through_the_api_gets_its_loader_at_its_next_boot() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let m = mac(1);
    assert_eq!(pxe_boot_file(&server, m, 1), "ipxe.efi");
    let (status, _, body) = http(
        server.web,
        "PUT",
        &format!("/api/v1/machines/{m}"),
        Some(TOKEN),
        Some(&json!({"name": "pc1", "loader": "custom/loader.efi", "variables": {"site": "lab"}})),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(pxe_boot_file(&server, m, 2), "custom/loader.efi");
    // Another machine keeps the policy's loader.
    assert_eq!(pxe_boot_file(&server, mac(2), 3), "ipxe.efi");
    // Its script sets its variables.
    let (status, _, script) = http(
        server.http,
        "GET",
        &format!("/boot.ipxe?mac={m}"),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe\nset site lab\n"), "{script}");
    // Deleted: the policy's loader again.
    let (status, _, body) = http(
        server.web,
        "DELETE",
        &format!("/api/v1/machines/{m}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(pxe_boot_file(&server, m, 4), "ipxe.efi");
}

#[test]
fn changes_need_the_bearer_token() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let path = format!("/api/v1/machines/{}", mac(3));
    let rec = json!({"name": "pc3"});
    for token in [None, Some("wrong"), Some("correct-horse-battery-stapl")] {
        let (status, head, body) = http(server.web, "PUT", &path, token, Some(&rec));
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    let (status, _, body) = http(server.web, "DELETE", &path, Some("wrong"), None);
    assert_eq!(status, 401, "{body}");
    // A method split across segments still reaches the API (not the engine's 405).
    let mut s = TcpStream::connect(server.web).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"PU").expect("send");
    std::thread::sleep(Duration::from_millis(100));
    write!(
        s,
        "T {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{{}}"
    )
    .expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    let (status, _, body) = http(server.web, "GET", "/api/v1/machines", None, None);
    assert_eq!(status, 200, "reads need no token: {body}");
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["total"], 0, "nothing stored by the refused requests");
    // Invalid fields: 400 with the reason.
    for (bad, why) in [
        (json!({"loader": "../../etc/shadow"}), "loader"),
        (json!({"entry": "nope"}), "not an id"),
        (json!({"variables": {"x": "${net0/ip}"}}), "variable x"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let (status, _, body) = http(server.web, "PUT", &path, Some(TOKEN), Some(&bad));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(why), "{bad}: {body}");
    }
    let (status, _, body) = http(
        server.web,
        "PUT",
        "/api/v1/machines/not-a-mac",
        Some(TOKEN),
        Some(&rec),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = http(server.web, "PUT", &path, Some(TOKEN), Some(&rec));
    assert_eq!(status, 201, "{body}");
    // Clearing the inventory is a change too.
    let report = format!("/report?mac={}&stage=script", mac(3));
    assert_eq!(http(server.web, "GET", &report, None, None).0, 200);
    let clients = || {
        let (_, _, body) = http(server.web, "GET", "/api/status", None, None);
        serde_json::from_str::<Value>(&body).expect("json")["clients"].clone()
    };
    assert_eq!(clients(), 1);
    let (status, _, body) = http(server.web, "DELETE", "/api/clients", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(clients(), 1);
    let (status, _, body) = http(server.web, "DELETE", "/api/clients", Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(clients(), 0);

    // No token configured: changes are refused with how to configure one.
    let dir2 = tempfile::tempdir().expect("dir");
    let cfg2 = config(dir2.path(), false, "");
    let open = Server::start(dir2.path(), &["--config", &cfg2]);
    let (status, _, body) = http(open.web, "PUT", &path, Some(TOKEN), Some(&rec));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token-sha256") && body.contains("token-file"),
        "{body}"
    );
}

#[test]
fn records_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let url = format!("sqlite://{}", dir.path().join("kept.db").display());
    let db_arg = format!("--database-url={url}");
    let m = mac(4);
    {
        let mut server = Server::start(dir.path(), &["--config", &cfg, &db_arg]);
        let (status, _, body) = http(
            server.web,
            "PUT",
            &format!("/api/v1/machines/{m}"),
            Some(TOKEN),
            Some(&json!({"name": "kept", "group": "lab", "loader": "kept.efi"})),
        );
        assert_eq!(status, 201, "{body}");
        server.stop();
    }
    let server = Server::start(dir.path(), &["--config", &cfg, &db_arg]);
    let (status, _, body) = http(
        server.web,
        "GET",
        &format!("/api/v1/machines/{m}"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let rec: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (rec["name"].as_str(), rec["group"].as_str()),
        (Some("kept"), Some("lab"))
    );
    assert_eq!(pxe_boot_file(&server, m, 5), "kept.efi");
}

#[test]
fn boot_once_gives_exit_on_the_second_boot() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let m = mac(5);
    let (status, _, body) = http(
        server.web,
        "PUT",
        &format!("/api/v1/machines/{m}"),
        Some(TOKEN),
        Some(&json!({"entry": "shell", "boot-once": true})),
    );
    assert_eq!(status, 201, "{body}");
    let script_path = format!("/boot.ipxe?mac={m}&arch=x86_64");
    let (_, _, first) = http(server.http, "GET", &script_path, None, None);
    assert!(
        first.contains("shell\n") && !first.contains("menu "),
        "the first boot runs its entry: {first}"
    );
    // The script reports the final stage: the deployment is done.
    let (status, _, body) = http(
        server.web,
        "GET",
        &format!("/report?mac={m}&stage=loaded"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        let (_, _, s) = http(server.http, "GET", &script_path, None, None);
        if s.contains("already deployed") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        second
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>(),
        ["exit"],
        "{second}"
    );
    let (_, _, rec) = http(
        server.web,
        "GET",
        &format!("/api/v1/machines/{m}"),
        None,
        None,
    );
    assert!(rec.contains("\"deployed\""), "{rec}");
    // Re-armed through the API: the entry again.
    let (status, _, body) = http(
        server.web,
        "PUT",
        &format!("/api/v1/machines/{m}"),
        Some(TOKEN),
        Some(&json!({"entry": "shell", "boot-once": true, "state": "pending"})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, _, third) = http(server.http, "GET", &script_path, None, None);
    assert!(!third.contains("already deployed"), "{third}");
}

/// `curl --interface SRC`: the status of a request from another loopback address.
fn curl_from(src: &str, method: &str, url: &str) -> (u16, String) {
    let out = Command::new(require("curl"))
        .args([
            "-s",
            "-m",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--interface",
            src,
        ])
        .args(["-X", method, url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn a_client_outside_web_allow_is_refused_while_loopback_is_served() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "allow = [\"127.0.0.1/32\"]\n");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let port = server.web.port();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for path in ["/api/v1/machines", "/api/status", "/metrics", "/"] {
        let (status, body) = curl_from("127.0.0.1", "GET", &url(path));
        assert_eq!(status, 200, "{path} from 127.0.0.1: {body}");
        let (status, body) = curl_from("127.0.0.2", "GET", &url(path));
        assert_eq!(status, 403, "{path} from 127.0.0.2: {body}");
        assert!(body.contains("web.allow"), "{body}");
    }
    let (status, _) = curl_from(
        "127.0.0.2",
        "DELETE",
        &url("/api/v1/machines/52:54:00:aa:00:09"),
    );
    assert_eq!(status, 403, "changes from outside web.allow");
    // Reports too: a peer outside web.allow feeds neither the inventory, nor the live page,
    // nor the database (on the previous code: 200, and the machine showed on the page).
    for method in ["GET", "POST"] {
        let (status, body) = curl_from(
            "127.0.0.2",
            method,
            &url("/report?mac=52:54:00:aa:00:09&stage=script&detail=forged"),
        );
        assert_eq!(status, 403, "{method} /report from 127.0.0.2: {body}");
    }
    // The live view takes its queue every 100 ms: give it several pumps.
    std::thread::sleep(Duration::from_millis(600));
    let (status, body) = curl_from("127.0.0.1", "GET", &url("/api/clients"));
    assert_eq!(status, 200);
    assert!(!body.contains("52:54:00:aa:00:09"), "inventory: {body}");
    let (status, body) = curl_from("127.0.0.1", "GET", &url("/api/v1/status"));
    assert_eq!(status, 200);
    assert!(
        !body.contains("52:54:00:aa:00:09") && !body.contains("forged"),
        "live page: {body}"
    );
    let (status, body) = curl_from(
        "127.0.0.1",
        "GET",
        &url("/api/v1/clients/52:54:00:aa:00:09"),
    );
    assert_eq!(status, 404, "database: {body}");
    // From inside web.allow a report is taken (and rate-limited per source, as before).
    let (status, body) = curl_from(
        "127.0.0.1",
        "GET",
        &url("/report?mac=52:54:00:aa:00:0a&stage=script"),
    );
    assert_eq!(status, 200, "{body}");
}

/// The thread id of `pid`'s thread named `name`.
fn thread_named(pid: u32, name: &str) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(Result::ok)
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|t| t.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no thread {name} in {pid}"))
}

/// The system calls thread `tid` made on file descriptors while `during` ran, each line with
/// the path of its descriptor (`strace -y`).
fn fd_syscalls_of(tid: u32, during: impl FnOnce()) -> String {
    let out = tempfile::NamedTempFile::new().expect("tmp");
    let mut strace = Command::new(require("strace"))
        .args(["-qq", "-y", "-e", "trace=%desc", "-o"])
        .arg(out.path())
        .args(["-p", &tid.to_string()])
        .spawn()
        .expect("strace");
    // Attached once it wrote anything, or after a moment (an idle loop may make no call).
    std::thread::sleep(Duration::from_millis(700));
    during();
    std::thread::sleep(Duration::from_millis(200));
    // SIGINT detaches strace from the thread; the server runs on.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    std::fs::read_to_string(out.path()).expect("strace output")
}

#[test]
fn machine_reads_are_served_from_memory_without_touching_the_database() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let db = dir.path().join("kept.db");
    let db_arg = format!("--database-url=sqlite://{}", db.display());
    let server = Server::start(dir.path(), &["--config", &cfg, &db_arg]);
    let m = mac(7);
    let (status, _, body) = http(
        server.web,
        "PUT",
        &format!("/api/v1/machines/{m}"),
        Some(TOKEN),
        Some(&json!({"name": "pc7", "group": "lab"})),
    );
    assert_eq!(status, 201, "{body}");
    let web = thread_named(server.pid(), "zpxe-web");
    let reads = fd_syscalls_of(web, || {
        for _ in 0..20 {
            let (status, _, body) = http(server.web, "GET", "/api/v1/machines", None, None);
            assert_eq!(status, 200, "{body}");
            let page: Value = serde_json::from_str(&body).expect("json");
            assert_eq!(page["total"], 1, "{page}");
            assert_eq!(page["machines"][0]["name"], "pc7", "{page}");
            let (status, _, body) = http(
                server.web,
                "GET",
                &format!("/api/v1/machines/{m}"),
                None,
                None,
            );
            assert_eq!(status, 200, "{body}");
            let (status, _, _) = http(
                server.web,
                "GET",
                "/api/v1/machines?group=lab&limit=5",
                None,
                None,
            );
            assert_eq!(status, 200);
        }
    });
    // The web thread answered (its sockets show up), and never touched the database file
    // (on the previous code: a SELECT of the whole registry per GET, preads of kept.db).
    assert!(
        !reads.trim().is_empty(),
        "strace saw no call of the web thread"
    );
    let db_calls: Vec<&str> = reads.lines().filter(|l| l.contains("kept.db")).collect();
    assert!(
        db_calls.is_empty(),
        "{} database calls on the web thread, e.g. {:?}",
        db_calls.len(),
        db_calls.first()
    );
    // The same check sees the database when a route does query it: it cannot pass blind.
    let queried = fd_syscalls_of(web, || {
        for _ in 0..5 {
            let (status, _, _) = http(server.web, "GET", "/api/v1/boots?since=0", None, None);
            assert_eq!(status, 200);
        }
    });
    assert!(
        queried.lines().any(|l| l.contains("kept.db")),
        "a database query made no call on kept.db:\n{queried}"
    );
}

#[test]
fn web_allow_and_the_token_follow_a_reload() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "allow = [\"127.0.0.1/32\"]\n");
    let mut server = Server::start(dir.path(), &["--config", &cfg]);
    let (web, port) = (server.web, server.web.port());
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let (status, _) = curl_from("127.0.0.2", "GET", &url("/api/status"));
    assert_eq!(status, 403);
    let put = |token: &str| {
        http(
            web,
            "PUT",
            &format!("/api/v1/machines/{}", mac(8)),
            Some(token),
            Some(&json!({"name": "pc8"})),
        )
        .0
    };
    assert_eq!(put(TOKEN), 201);
    // A new allow list and a new token in the token file, then SIGHUP.
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("127.0.0.1/32", "127.0.0.0/8")).expect("config");
    std::fs::write(dir.path().join("token"), "a-new-token\n").expect("token");
    let hup = |server: &Server| {
        let ok = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -HUP");
    };
    hup(&server);
    server.wait_for_log("web access rules reloaded", Duration::from_secs(10));
    let (status, body) = curl_from("127.0.0.2", "GET", &url("/api/status"));
    assert_eq!(status, 200, "web.allow after the reload: {body}");
    assert_eq!(put(TOKEN), 401, "the old token after the reload");
    assert_eq!(put("a-new-token"), 200, "the new token after the reload");
    // A token file that cannot be read refuses the whole reload: the rules stay.
    std::fs::write(&cfg, text.replace("127.0.0.1/32", "127.0.0.3/32")).expect("config");
    std::fs::remove_file(dir.path().join("token")).expect("rm token");
    hup(&server);
    server.wait_for_log("reload refused", Duration::from_secs(10));
    let (status, _) = curl_from("127.0.0.2", "GET", &url("/api/status"));
    assert_eq!(status, 200, "the rules of the refused reload do not apply");
    assert_eq!(put("a-new-token"), 200);
}

fn machines(server: &Server, token_file: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(zpxe_bin());
    cmd.arg("machines")
        .args(["--url", &format!("http://{}", server.web)])
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("ZPXE_TOKEN");
    run(&mut cmd, Duration::from_secs(20))
}

#[test]
fn machines_import_names_the_bad_line_and_imports_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let token: PathBuf = dir.path().join("token");
    let csv = dir.path().join("machines.csv");
    let csv_arg = csv.display().to_string();
    let count = || {
        let (_, _, body) = http(server.web, "GET", "/api/v1/machines", None, None);
        serde_json::from_str::<Value>(&body).expect("json")["total"].clone()
    };
    // Line 3 has a bad MAC: found before anything is sent.
    std::fs::write(
        &csv,
        "mac,name,group,loader,boot-once,variables\n\
         52:54:00:bb:00:01,pc1,lab,,false,os=w11\n\
         52:54:00:bb:00:0g,pc2,lab,,false,\n\
         52:54:00:bb:00:03,pc3,lab,x.efi,true,\n",
    )
    .expect("csv");
    let (ok, out) = machines(&server, &token, &["import", &csv_arg]);
    assert!(!ok, "{out}");
    assert!(out.contains(&format!("{csv_arg}:3: mac")), "{out}");
    assert!(out.contains("nothing was imported"), "{out}");
    assert_eq!(count(), 0);
    // Line 4 names an entry the menu lacks: the server refuses it, reported by line.
    std::fs::write(
        &csv,
        "mac,name,entry\n52:54:00:bb:00:01,pc1,local\n52:54:00:bb:00:02,pc2,shell\n52:54:00:bb:00:03,pc3,nope\n",
    )
    .expect("csv");
    let (ok, out) = machines(&server, &token, &["import", &csv_arg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("{csv_arg}:4: entry \"nope\"")),
        "{out}"
    );
    assert_eq!(count(), 0, "all or nothing");
    // Fixed: all three.
    std::fs::write(
        &csv,
        "mac,name,entry\n52:54:00:bb:00:01,pc1,local\n52:54:00:bb:00:02,pc2,shell\n52:54:00:bb:00:03,pc3,\n",
    )
    .expect("csv");
    let (ok, out) = machines(&server, &token, &["import", &csv_arg]);
    assert!(ok, "{out}");
    assert_eq!(count(), 3);
    let (ok, out) = machines(&server, &token, &["list"]);
    assert!(
        ok && out.contains("pc2") && out.contains("3 machines"),
        "{out}"
    );
    let (ok, out) = machines(&server, &token, &["rm", "52:54:00:bb:00:02"]);
    assert!(ok, "{out}");
    let (ok, out) = machines(
        &server,
        &token,
        &[
            "add",
            "52:54:00:bb:00:09",
            "--name",
            "pc9",
            "--loader",
            "l.efi",
            "--var",
            "a=b",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(count(), 3);
    // Without the token the CLI says how to give it.
    let mut cmd = Command::new(zpxe_bin());
    cmd.args([
        "machines",
        "--url",
        &format!("http://{}", server.web),
        "rm",
        "52:54:00:bb:00:01",
    ])
    .env_remove("ZPXE_TOKEN");
    let (ok, out) = run(&mut cmd, Duration::from_secs(20));
    assert!(!ok && out.contains("ZPXE_TOKEN"), "{out}");
}

/// A write without a token is refused on its head: the server never waits for (or buffers) a
/// body an unauthenticated peer announces. Before, it read up to 4 MiB first and only then
/// checked the token, so this head alone got no answer until the 10 s request timeout.
#[test]
fn a_write_without_a_token_is_refused_before_its_body() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    let server = Server::start(dir.path(), &["--config", &cfg]);
    let mut s = TcpStream::connect(server.web).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let head = format!(
        "POST /api/v1/machines HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 4000000\r\n\r\n",
        server.web
    );
    s.write_all(head.as_bytes()).expect("send head");
    let started = Instant::now();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 401"),
        "no 401 for a head without a token within {:?}: {reply:?}",
        started.elapsed()
    );
}

/// `zpxe explain` (the command) for an x64 UEFI PXE ROM's 4011 request: its text.
fn explain_text(cfg: &str, m: MacAddr) -> String {
    let mut cmd = Command::new(zpxe_bin());
    cmd.args(["explain", "-c", cfg, "--mac", &m.to_string(), "--arch", "7"])
        .args(["--pxe", "--client-ip", "127.0.0.1", "--server", "127.0.0.1"]);
    let (ok, out) = run(&mut cmd, Duration::from_secs(20));
    assert!(ok, "zpxe explain failed:\n{out}");
    out
}

#[test]
fn a_machine_in_conf_d_gets_its_override_until_a_reload_removes_it() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().display().to_string();
    let cfg = config(dir.path(), true, &format!("[server]\nroot = {root:?}\n"));
    std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
    let lab = dir.path().join("conf.d/lab.toml");
    let (m, other) = (mac(20), mac(21));
    std::fs::write(
        &lab,
        format!(
            "[[machine]]\nmac = \"{m}\"\nname = \"pc20\"\ngroup = \"lab\"\n\
             loader = \"custom/file.efi\"\nentry = \"shell\"\nvariables = {{ site = \"lab\" }}\n"
        ),
    )
    .expect("conf.d/lab.toml");
    let mut server = Server::start(dir.path(), &["--config", &cfg]);
    assert_eq!(pxe_boot_file(&server, m, 1), "custom/file.efi");
    assert_eq!(pxe_boot_file(&server, other, 2), "ipxe.efi");
    let http_addr = server.http;
    let script = |mac: MacAddr| {
        let (status, _, script) = http(
            http_addr,
            "GET",
            &format!("/boot.ipxe?mac={mac}"),
            None,
            None,
        );
        assert_eq!(status, 200, "{script}");
        script
    };
    let s = script(m);
    assert!(s.starts_with("#!ipxe\nset site lab\n"), "{s}");
    assert!(
        s.contains("shell") && !s.contains("menu "),
        "the entry, no menu: {s}"
    );
    // The API shows it with its place and refuses to change or delete it, naming the file.
    let place = format!("{}:1:1", lab.display());
    let (status, _, body) = http(
        server.web,
        "GET",
        &format!("/api/v1/machines/{m}"),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
    let rec: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rec["source"], place.as_str(), "{body}");
    assert_eq!(rec["loader"], "custom/file.efi", "{body}");
    let path = format!("/api/v1/machines/{m}");
    for (method, body) in [("PUT", Some(json!({"name": "x"}))), ("DELETE", None)] {
        let (status, _, answer) = http(server.web, method, &path, Some(TOKEN), body.as_ref());
        assert_eq!(status, 409, "{method}: {answer}");
        assert!(answer.contains(&place), "{method}: {answer}");
    }
    let (status, _, answer) = http(
        server.web,
        "POST",
        "/api/v1/machines",
        Some(TOKEN),
        Some(&json!([{"mac": other.to_string()}, {"mac": m.to_string()}])),
    );
    assert_eq!(status, 409, "{answer}");
    let refused: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(refused["errors"][0]["index"], 1, "{answer}");
    assert!(answer.contains(&place), "{answer}");
    let (_, _, body) = http(server.web, "GET", "/api/v1/machines", None, None);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        page["total"], 1,
        "the refused import stored nothing: {body}"
    );
    // `zpxe explain` and /api/v1/explain name the record as the decider.
    let text = explain_text(&cfg, m);
    assert!(
        text.contains(&format!("machine record at {place}")),
        "{text}"
    );
    assert!(text.contains("custom/file.efi"), "{text}");
    let q = format!("/api/v1/explain?mac={m}&arch=7&pxe=1&client-ip=127.0.0.1&server=127.0.0.1");
    let (status, _, body) = http(server.web, "GET", &q, None, None);
    assert_eq!(status, 200, "{body}");
    let e: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        e["decision"]["by"],
        format!("machine record at {place}"),
        "{body}"
    );

    // The record removed from conf.d, then a reload: the static policy again.
    std::fs::write(&lab, "# no machines here now\n").expect("conf.d/lab.toml");
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -HUP");
    server.wait_for_log("[[machine]] records reloaded", Duration::from_secs(10));
    assert_eq!(pxe_boot_file(&server, m, 3), "ipxe.efi");
    let s = script(m);
    assert!(!s.contains("set site"), "{s}");
    let text = explain_text(&cfg, m);
    assert!(!text.contains("machine record"), "{text}");
    // Now the API may store one.
    let (status, _, body) = http(
        server.web,
        "PUT",
        &path,
        Some(TOKEN),
        Some(&json!({"name": "db20"})),
    );
    assert_eq!(status, 201, "{body}");

    // `zpxe check` on a configuration whose [[machine]] shadows that database record warns,
    // naming the record's place.
    let check_dir = tempfile::tempdir().expect("dir");
    let check_cfg = check_dir.path().join("zpxe.toml");
    std::fs::write(
        &check_cfg,
        format!(
            "[server]\nroot = {root:?}\n[database]\nurl = \"sqlite://{}\"\n\
             [[machine]]\nmac = \"{m}\"\nname = \"file20\"\n",
            server.db_path.display()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(zpxe_bin());
    cmd.args(["check", "-c"]).arg(&check_cfg);
    let (ok, out) = run(&mut cmd, Duration::from_secs(20));
    assert!(ok, "warnings leave check's status 0:\n{out}");
    assert!(
        out.contains(&format!(
            "{}:5:1: warning: this [[machine]] record shadows the database's record for MAC {m} \
             (name \"db20\")",
            check_cfg.display()
        )),
        "{out}"
    );
}

#[test]
fn a_boot_once_machine_in_conf_d_gets_exit_after_its_deployment_even_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path(), true, "");
    std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
    let m = mac(30);
    std::fs::write(
        dir.path().join("conf.d/once.toml"),
        format!("[[machine]]\nmac = \"{m}\"\nentry = \"shell\"\nboot-once = true\n"),
    )
    .expect("conf.d/once.toml");
    let db = dir.path().join("kept.db");
    let db_url = format!("--database-url=sqlite://{}", db.display());
    let script_path = format!("/boot.ipxe?mac={m}&arch=x86_64");
    let exit_only = |s: &str| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            == ["exit"]
    };
    {
        let server = Server::start(dir.path(), &["--config", &cfg, &db_url]);
        let (_, _, first) = http(server.http, "GET", &script_path, None, None);
        assert!(
            first.contains("shell\n") && !first.contains("menu "),
            "the first boot runs its entry: {first}"
        );
        let report = format!("/report?mac={m}&stage=loaded");
        assert_eq!(http(server.web, "GET", &report, None, None).0, 200);
        let deadline = Instant::now() + Duration::from_secs(10);
        let second = loop {
            let (_, _, s) = http(server.http, "GET", &script_path, None, None);
            if exit_only(&s) || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(exit_only(&second), "{second}");
        let (_, _, rec) = http(
            server.web,
            "GET",
            &format!("/api/v1/machines/{m}"),
            None,
            None,
        );
        let rec: Value = serde_json::from_str(&rec).expect("json");
        assert_eq!(rec["state"], "deployed", "{rec}");
        assert!(
            rec["source"]
                .as_str()
                .is_some_and(|s| s.ends_with("once.toml:1:1")),
            "{rec}"
        );
    }
    // Restarted on the same database: still deployed; then re-armed through the API.
    let server = Server::start(dir.path(), &["--config", &cfg, &db_url]);
    let (_, _, again) = http(server.http, "GET", &script_path, None, None);
    assert!(exit_only(&again), "deployed survives a restart: {again}");
    let path = format!("/api/v1/machines/{m}");
    let (status, _, body) = http(
        server.web,
        "PUT",
        &path,
        Some(TOKEN),
        Some(&json!({"state": "pending", "name": "x"})),
    );
    assert_eq!(status, 409, "only the state may change: {body}");
    let (status, _, body) = http(
        server.web,
        "PUT",
        &path,
        Some(TOKEN),
        Some(&json!({"state": "pending"})),
    );
    assert_eq!(status, 200, "{body}");
    let rec: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rec["state"], "pending", "{body}");
    let (_, _, third) = http(server.http, "GET", &script_path, None, None);
    assert!(third.contains("shell\n") && !exit_only(&third), "{third}");
}
