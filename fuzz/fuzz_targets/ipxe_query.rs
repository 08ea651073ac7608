//! The iPXE script query (`/boot.ipxe?mac=..&uuid=..&arch=..`) and the script made from it.
//!
//! Input: a flags byte, then the query string.
//! Oracles: no panic; what survives normalization is exactly the normalized form (lowercase
//! hex MAC with colons, 8-4-4-4-12 UUID, `[a-z0-9_-]{1,16}` arch) and parses back unchanged;
//! the script never carries a client byte outside those forms (no new line, no `${`, no
//! iPXE operator), so it is the same script as for the normalized query.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use zpxe_engine::http::{BootMenu, BootQuery, BootRule, EntryKind, MenuEntry};

fn menu() -> BootMenu {
    BootMenu {
        default: Some("winpe".into()),
        entries: vec![
            MenuEntry {
                id: "winpe".into(),
                label: "Windows PE".into(),
                kind: EntryKind::Winpe {
                    wimboot: "wimboot".into(),
                    bcd: "Boot/BCD".into(),
                    boot_sdi: "Boot/boot.sdi".into(),
                    boot_wim: "sources/boot.wim".into(),
                },
            },
            MenuEntry {
                id: "shell".into(),
                label: "iPXE shell".into(),
                kind: EntryKind::Shell,
            },
        ],
        rules: vec![
            BootRule {
                mac: vec!["52-54-00-12-34-56".parse().expect("mac")],
                entry: Some("shell".into()),
                ..BootRule::default()
            },
            BootRule {
                uuid: vec!["01020304-0506-0708-090a-0b0c0d0e0f10".parse().expect("uuid")],
                arch: vec!["x86_64".parse().expect("arch")],
                entry: Some("winpe".into()),
                ..BootRule::default()
            },
        ],
        ..BootMenu::default()
    }
}

fn hex_with(s: &str, sep: u8, groups: &[usize]) -> bool {
    let parts: Vec<&str> = s.split(char::from(sep)).collect();
    parts.len() == groups.len()
        && parts.iter().zip(groups).all(|(p, &n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, query)) = data.split_first() else {
        return;
    };
    let query = String::from_utf8_lossy(query);
    let q = BootQuery::parse(&query);
    // Parsed values print in one canonical form each, which reads back as the same value.
    let (mac, uuid, arch) = (
        q.mac.map(|m| m.to_string()),
        q.uuid.map(|u| u.to_string()),
        q.arch.map(|a| a.to_string()),
    );
    if let Some(mac) = &mac {
        assert!(hex_with(mac, b':', &[2; 6]), "mac {mac:?}");
    }
    if let Some(uuid) = &uuid {
        assert!(hex_with(uuid, b'-', &[8, 4, 4, 4, 12]), "uuid {uuid:?}");
    }
    if let Some(arch) = &arch {
        assert!(
            (1..=16).contains(&arch.len())
                && arch.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'-'),
            "arch {arch:?}"
        );
    }
    let mut canonical = Vec::new();
    for (key, value) in [("mac", &mac), ("uuid", &uuid), ("arch", &arch)] {
        if let Some(v) = value {
            canonical.push(format!("{key}={v}"));
        }
    }
    let canonical = canonical.join("&");
    assert_eq!(
        BootQuery::parse(&canonical),
        q,
        "normalized query {canonical:?}"
    );

    static MENU: OnceLock<Arc<BootMenu>> = OnceLock::new();
    let menu = MENU.get_or_init(|| Arc::new(menu()));
    let report = (flags & 1 != 0).then_some("http://10.0.0.1:8051/report");
    let menu_only = flags & 2 != 0;
    let script = menu.generate(&q, "http://10.0.0.1:8050", report, menu_only);
    assert!(script.starts_with("#!ipxe\n"));
    assert!(!script.contains('\r'));
    for line in script.lines() {
        // `${` only as the script's own expansions.
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            let tail = &rest[at..];
            assert!(
                tail.starts_with("${net0/mac}") || tail.starts_with("${zpxe_selected}"),
                "client text reached an expansion: {line:?}"
            );
            rest = &rest[at + 2..];
        }
    }
});
