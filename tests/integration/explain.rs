//! `zpxe explain` agrees with what the server really sends: for a table of client facts, a
//! real DHCP DISCOVER (relayed, so the offer comes back to a loopback "relay") or 4011 REQUEST
//! goes to a running zpxe, and the reply's fields are compared with `zpxe explain --json` for
//! the same facts; an iPXE client's script is fetched from the server and compared too, and
//! `/api/v1/explain` must give the same JSON.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use zpxe_testkit::io::eintr;

use serde_json::Value;
use zpxe_engine::dhcp::options::code;
use zpxe_engine::dhcp::{DhcpOptions, DhcpRepr, MessageType};
use zpxe_testkit::dhcp::boot_request;

use crate::common::{Server, relay_socket, zpxe_bin};

const CONFIG: &str = r#"
[boot]
ignore-macs = ["52:54:00:00:99:01"]

[[boot.rule]]
mac = "52:54:00:00:0b:01"
loader = "special-arm64.efi"
next-server = "127.0.0.9"

[[boot.rule]]
subnet = "127.0.0.3/32"
arch = 0
loader = "lab.kpxe"

[[boot.rule]]
mac = ["52:54:00:00:0c:01", "52:54:00:00:0c:02"]
arch = [7, 9]
loader = "listed.efi"

[[boot.rule]]
mac-prefix = "52:54:00:00:0d:*"
loader = "oui.efi"

[menu]
default = "shell"

[[menu.entries]]
id = "shell"
label = "iPXE shell"
kind = { type = "shell" }

[[menu.entries]]
id = "local"
label = "Local disk"
kind = { type = "exit" }

[[menu.rules]]
mac = "52:54:00:00:1e:02"
entry = "local"

[[menu.rules]]
mac-prefix = "52:54:00:00:1f"
subnet = "127.0.0.1/32"
entry = "local"
"#;

/// One row: the facts, as `zpxe explain` flags, and how the request is sent.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    mac: [u8; 6],
    arch: Option<u16>,
    /// Relayed DISCOVER from this loopback "relay"; `None`: REQUEST to 4011 from 127.0.0.1.
    relay: Option<Ipv4Addr>,
    user_class: Option<&'static str>,
    uuid: Option<&'static str>,
    /// Whether zpxe answers.
    answered: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "BIOS (arch 0), relayed",
        mac: [0x52, 0x54, 0, 0, 0, 0x01],
        arch: Some(0),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "UEFI x64 (arch 7), relayed, with a UUID",
        mac: [0x52, 0x54, 0, 0, 0, 0x07],
        arch: Some(7),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: Some("8d1b2f34-0000-4000-8000-0000000000aa"),
        answered: true,
    },
    Case {
        name: "UEFI x64 BC (arch 9), REQUEST to 4011",
        mac: [0x52, 0x54, 0, 0, 0, 0x09],
        arch: Some(9),
        relay: None,
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "ARM64 (arch 11) with a MAC rule",
        mac: [0x52, 0x54, 0, 0, 0x0b, 0x01],
        arch: Some(11),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "UEFI HTTP boot (arch 16, HTTPClient), relayed",
        mac: [0x52, 0x54, 0, 0, 0, 0x10],
        arch: Some(16),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "iPXE (user class), menu",
        mac: [0x52, 0x54, 0, 0, 0x1e, 0x01],
        arch: Some(7),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: Some("iPXE"),
        uuid: None,
        answered: true,
    },
    Case {
        name: "iPXE (user class) with a menu rule, REQUEST to 4011",
        mac: [0x52, 0x54, 0, 0, 0x1e, 0x02],
        arch: Some(0),
        relay: None,
        user_class: Some("iPXE"),
        uuid: None,
        answered: true,
    },
    Case {
        name: "BIOS relayed from the rule's subnet",
        mac: [0x52, 0x54, 0, 0, 0, 0x03],
        arch: Some(0),
        relay: Some(Ipv4Addr::new(127, 0, 0, 3)),
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "refused: an architecture without a loader (10, ARM32 UEFI)",
        mac: [0x52, 0x54, 0, 0, 0, 0x0a],
        arch: Some(10),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: false,
    },
    Case {
        name: "refused: MAC on the ignore list",
        mac: [0x52, 0x54, 0, 0, 0x99, 0x01],
        arch: Some(7),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: false,
    },
    Case {
        name: "UEFI x64 BC (arch 9) on a rule's MAC list, REQUEST to 4011",
        mac: [0x52, 0x54, 0, 0, 0x0c, 0x02],
        arch: Some(9),
        relay: None,
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "UEFI x64 (arch 7) under a rule's MAC prefix, relayed",
        mac: [0x52, 0x54, 0, 0, 0x0d, 0x05],
        arch: Some(7),
        relay: Some(Ipv4Addr::new(127, 0, 0, 2)),
        user_class: None,
        uuid: None,
        answered: true,
    },
    Case {
        name: "iPXE under a menu rule's MAC prefix and subnet, REQUEST to 4011",
        mac: [0x52, 0x54, 0, 0, 0x1f, 0x07],
        arch: Some(7),
        relay: None,
        user_class: Some("iPXE"),
        uuid: None,
        answered: true,
    },
];

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The request firmware sends for `case` (built here, apart from zpxe's own builder).
fn request(case: &Case, xid: u32) -> Vec<u8> {
    let http = matches!(case.arch, Some(16 | 19));
    let arch = case.arch.unwrap_or(0);
    let vendor = if http {
        format!("HTTPClient:Arch:{arch:05}:UNDI:003000")
    } else {
        format!("PXEClient:Arch:{arch:05}:UNDI:002001")
    };
    let options = DhcpOptions {
        message_type: Some(if case.relay.is_some() {
            MessageType::Discover
        } else {
            MessageType::Request
        }),
        vendor_class: Some(vendor.into_bytes()),
        client_arch: case.arch.into_iter().collect(),
        client_uuid: case.uuid.map(|u| u.parse().expect("uuid")),
        user_class: case.user_class.map(|c| c.as_bytes().to_vec()),
        parameter_request_list: Some(vec![code::VENDOR_SPECIFIC, code::BOOTFILE_NAME]),
        ..Default::default()
    };
    let giaddr = case.relay.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mac = zpxe_engine::dhcp::MacAddr(case.mac);
    DhcpRepr {
        ciaddr: if case.relay.is_none() {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        ..boot_request(xid, mac, giaddr, options)
    }
    .to_bytes()
}

/// Sends `case`'s request and waits for the reply (`None` after 1.5 s of silence).
fn exchange(server: &Server, case: &Case, xid: u32) -> Option<(DhcpRepr, SocketAddr)> {
    let (socket, to) = match case.relay {
        // The relay listens on the server's DHCP port at its own address, as relays do.
        Some(relay) => (
            relay_socket(SocketAddr::new(relay.into(), server.dhcp.port())),
            server.dhcp,
        ),
        None => (UdpSocket::bind("127.0.0.1:0").expect("client"), server.pxe),
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    socket.send_to(&request(case, xid), to).expect("send");
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = eintr(|| socket.recv_from(&mut buf)).ok()?;
        let reply = DhcpRepr::parse_bytes(&buf[..n]).expect("reply parses");
        if reply.xid == xid {
            return Some((reply, from));
        }
    }
}

fn explain_json(config: &Path, case: &Case) -> Value {
    let mut cmd = Command::new(zpxe_bin());
    cmd.args(["explain", "--json", "-c"])
        .arg(config)
        .args(["--mac", &mac_text(case.mac)]);
    if let Some(a) = case.arch {
        cmd.args(["--arch", &a.to_string()]);
    }
    if let Some(r) = case.relay {
        cmd.args(["--relay", &r.to_string()]);
    } else {
        cmd.args(["--pxe", "--client-ip", "127.0.0.1"]);
    }
    if let Some(u) = case.user_class {
        cmd.args(["--user-class", u]);
    }
    if let Some(u) = case.uuid {
        cmd.args(["--uuid", u]);
    }
    let out = cmd.output().expect("zpxe explain");
    assert!(
        out.status.success(),
        "zpxe explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("explain JSON")
}

/// `GET path` on `addr` with the Host header a client would send; the body.
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

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn explain_agrees_with_real_dhcp_exchanges() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let config = dir.path().join("zpxe.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let server = Server::start(&root, &["--config", config.to_str().expect("utf-8")]);
    // The ports the flags gave the server, for `zpxe explain` to read: an include beside the
    // file, which the running server did not see (the flags won there anyway).
    std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
    std::fs::write(
        dir.path().join("conf.d/ports.toml"),
        format!(
            "[server]\nroot = {:?}\nlisten = [\"127.0.0.1\"]\n[ports]\ndhcp = {}\npxe = {}\n\
             tftp = {}\nhttp = {}\nweb = {}\n",
            root.to_str().expect("utf-8"),
            server.dhcp.port(),
            server.pxe.port(),
            server.tftp.port(),
            server.http.port(),
            server.web.port()
        ),
    )
    .expect("include");

    for (i, case) in CASES.iter().enumerate() {
        let e = explain_json(&config, case);
        let got = exchange(&server, case, 0x1000 + i as u32);
        let name = case.name;
        assert_eq!(
            e["decision"]["answered"],
            Value::Bool(case.answered),
            "{name}: {e:#}"
        );
        let Some((reply, from)) = got else {
            assert!(!case.answered, "{name}: zpxe sent no reply; explain: {e:#}");
            assert!(e["reply"].is_null(), "{name}");
            assert!(e["decision"]["refusal"].is_string(), "{name}: {e:#}");
            continue;
        };
        assert!(
            case.answered,
            "{name}: zpxe answered a client explain says it refuses"
        );
        let r = &e["reply"];
        let kind = match reply.options.message_type {
            Some(MessageType::Offer) => "OFFER",
            Some(MessageType::Ack) => "ACK",
            other => panic!("{name}: reply type {other:?}"),
        };
        assert_eq!(r["message"], kind, "{name}");
        assert_eq!(r["next_server"], reply.siaddr.to_string(), "{name}");
        assert_eq!(r["file"], text(&reply.boot_file), "{name}");
        let opt = |v: &Option<Vec<u8>>| v.as_deref().map_or(Value::Null, text);
        assert_eq!(
            r["bootfile_name"],
            opt(&reply.options.bootfile_name),
            "{name}"
        );
        assert_eq!(
            r["vendor_class"],
            opt(&reply.options.vendor_class),
            "{name}"
        );
        assert_eq!(
            r["vendor_specific"],
            reply
                .options
                .vendor_specific
                .as_deref()
                .map_or(Value::Null, |v| Value::String(hex(v))),
            "{name}"
        );
        assert_eq!(
            r["server_id"],
            reply
                .options
                .server_id
                .map_or(Value::Null, |ip| Value::String(ip.to_string())),
            "{name}"
        );
        assert_eq!(r["giaddr"], reply.giaddr.to_string(), "{name}");
        assert_eq!(r["broadcast"], Value::Bool(reply.broadcast), "{name}");
        assert_eq!(
            from.port(),
            r["from_port"].as_u64().expect("from_port") as u16,
            "{name}"
        );
        if let Some(relay) = case.relay {
            // Relayed: the reply goes to the relay on the DHCP port, as explain says.
            assert_eq!(r["to"], format!("{relay}:{}", server.dhcp.port()));
        }

        // The script an iPXE client fetches is the one explain shows.
        if case.user_class == Some("iPXE") {
            let url = e["ipxe"]["url"].as_str().expect("script url");
            let path = url
                .strip_prefix(&format!("http://{}", server.http))
                .expect("the script is on zpxe's HTTP port");
            let (status, script) = http_get(server.http, path);
            assert_eq!(status, 200, "{name}");
            assert_eq!(e["ipxe"]["script"], Value::String(script), "{name}");
        }

        // The web service explains the same way.
        let mut query = format!("mac={}", mac_text(case.mac));
        if let Some(a) = case.arch {
            query.push_str(&format!("&arch={a}"));
        }
        match case.relay {
            Some(r) => query.push_str(&format!("&relay={r}")),
            None => query.push_str("&pxe=1&client-ip=127.0.0.1"),
        }
        if let Some(u) = case.user_class {
            query.push_str(&format!("&user-class={u}"));
        }
        if let Some(u) = case.uuid {
            query.push_str(&format!("&uuid={u}"));
        }
        let (status, body) = http_get(server.web, &format!("/api/v1/explain?{query}"));
        assert_eq!(status, 200, "{name}: {body}");
        let web: Value = serde_json::from_str(&body).expect("web JSON");
        assert_eq!(web, e, "{name}: /api/v1/explain differs from zpxe explain");
    }

    // What decided, for a few rows.
    let arm = explain_json(&config, &CASES[3]);
    assert_eq!(arm["decision"]["by"], "boot.rule[0]");
    assert_eq!(
        arm["decision"]["rule"]["at"],
        format!("{}:5:1", config.display())
    );
    let lab = explain_json(&config, &CASES[7]);
    assert_eq!(lab["decision"]["by"], "boot.rule[1]");
    assert_eq!(lab["reply"]["file"], "lab.kpxe");
    let ignored = explain_json(&config, &CASES[9]);
    assert_eq!(ignored["decision"]["by"], "boot.ignore-macs");
    let ruled = explain_json(&config, &CASES[6]);
    assert_eq!(ruled["ipxe"]["entry"], "local");
    assert_eq!(ruled["ipxe"]["menu_rule"]["index"], 0);
    let listed = explain_json(&config, &CASES[10]);
    assert_eq!(listed["decision"]["by"], "boot.rule[2]");
    assert_eq!(listed["decision"]["boot_file_from"], "boot.rule[2].loader");
    assert_eq!(listed["reply"]["file"], "listed.efi");
    let oui = explain_json(&config, &CASES[11]);
    assert_eq!(oui["decision"]["by"], "boot.rule[3]");
    assert_eq!(oui["reply"]["file"], "oui.efi");
    let by_prefix = explain_json(&config, &CASES[12]);
    assert_eq!(by_prefix["ipxe"]["entry"], "local");
    assert_eq!(by_prefix["ipxe"]["menu_rule"]["index"], 1);
}

/// `[log] format = "json"`: one JSON object per line; a refusal by policy is logged at info
/// with its reason, once per client however often it retries; the HTTP line names the method
/// as text (it printed `method=Some(Get)`).
#[test]
fn refusals_are_logged_at_info_once_per_client_in_json() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::write(root.join("hello.txt"), b"hello").expect("file");
    let config = dir.path().join("zpxe.toml");
    std::fs::write(
        &config,
        "[log]\nformat = \"json\"\n[boot]\nignore-macs = [\"52:54:00:00:99:01\"]\n",
    )
    .expect("config");
    let mut server = Server::start(&root, &["--config", config.to_str().expect("utf-8")]);
    // A relay address of this test's own: tests run side by side.
    let relayed = |c: &Case| Case {
        relay: Some(Ipv4Addr::new(127, 0, 0, 5)),
        ..*c
    };
    let (ignored, arch10) = (&relayed(&CASES[9]), &relayed(&CASES[8]));
    // Firmware retries: five tries each.
    for i in 0..5 {
        assert!(exchange_quick(&server, ignored, 0x2000 + i).is_none());
        assert!(exchange_quick(&server, arch10, 0x3000 + i).is_none());
    }
    let (status, body) = http_get(server.http, "/hello.txt");
    assert_eq!((status, body.as_str()), (200, "hello"));
    server.wait_for_log("\"HTTP request\"", Duration::from_secs(5));
    server.stop();
    let lines = server.drain_log().to_vec();
    let objects: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refusals: Vec<&Value> = objects
        .iter()
        .filter(|o| o["message"] == "DHCP request refused")
        .collect();
    assert_eq!(refusals.len(), 2, "one line per client: {lines:#?}");
    for r in &refusals {
        assert_eq!(r["level"], "INFO");
        assert_eq!(r["held_back"], 0);
    }
    let reason = |mac: [u8; 6]| {
        refusals
            .iter()
            .find(|r| r["mac"] == mac_text(mac))
            .map(|r| r["reason"].clone())
    };
    assert_eq!(
        reason(ignored.mac),
        Some(Value::String("MAC is on the ignore list".into()))
    );
    assert_eq!(
        reason(arch10.mac),
        Some(Value::String(
            "no boot file configured for client architecture 10".into()
        ))
    );
    let http = objects
        .iter()
        .find(|o| o["message"] == "HTTP request")
        .expect("HTTP line");
    assert_eq!(http["method"], "GET", "{http}");
    assert_eq!(http["path"], "/hello.txt", "{http}");
}

/// [`exchange`] with a short wait, for requests that get no reply.
fn exchange_quick(server: &Server, case: &Case, xid: u32) -> Option<DhcpRepr> {
    let relay = case.relay.expect("relayed case");
    let socket = relay_socket(SocketAddr::new(relay.into(), server.dhcp.port()));
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    socket
        .send_to(&request(case, xid), server.dhcp)
        .expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = eintr(|| socket.recv_from(&mut buf)).ok()?;
    DhcpRepr::parse_bytes(&buf[..n]).ok()
}

/// A machine registry record (set through the API) decides: `/api/v1/explain` names it, and
/// its loader and script are the ones the server really gives.
#[test]
fn a_registry_record_decides_and_api_explain_says_so() {
    const TOKEN: &str = "explain-test-token-0123456789";
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = dir.path().join("zpxe.toml");
    std::fs::write(
        &config,
        format!(
            "[web]\ntoken-file = {:?}\n{CONFIG}",
            token.display().to_string()
        ),
    )
    .expect("config");
    let server = Server::start(&root, &["--config", config.to_str().expect("utf-8")]);
    let mac = [0x52, 0x54, 0, 0, 0x4e, 0x01];
    let body = r#"{"name": "pc1", "loader": "custom/loader.efi", "entry": "local", "variables": {"site": "lab"}}"#;
    let mut s = TcpStream::connect(server.web).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "PUT /api/v1/machines/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        mac_text(mac),
        server.web,
        body.len()
    )
    .expect("PUT");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 201"), "{raw}");

    let pxe = Case {
        name: "registered UEFI x64",
        mac,
        arch: Some(7),
        relay: Some(Ipv4Addr::new(127, 0, 0, 6)),
        user_class: None,
        uuid: None,
        answered: true,
    };
    let (reply, _) = exchange(&server, &pxe, 0x4000).expect("reply");
    assert_eq!(reply.boot_file, b"custom/loader.efi");
    let query = format!("mac={}&arch=7&relay=127.0.0.6", mac_text(mac));
    let (status, body) = http_get(server.web, &format!("/api/v1/explain?{query}"));
    assert_eq!(status, 200, "{body}");
    let e: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(e["reply"]["file"], "custom/loader.efi", "{e:#}");
    assert_eq!(e["decision"]["by"], "machine registry", "{e:#}");

    // iPXE: the record's entry and variables, as the HTTP service serves them.
    let (status, body) = http_get(
        server.web,
        &format!("/api/v1/explain?{query}&user-class=iPXE"),
    );
    assert_eq!(status, 200, "{body}");
    let e: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(e["ipxe"]["by"], "machine registry", "{e:#}");
    let url = e["ipxe"]["url"].as_str().expect("url");
    let path = url
        .strip_prefix(&format!("http://{}", server.http))
        .expect("zpxe's URL");
    let (status, script) = http_get(server.http, path);
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe\nset site lab\n"), "{script}");
    assert_eq!(e["ipxe"]["script"], Value::String(script));
}
