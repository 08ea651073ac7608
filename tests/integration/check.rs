//! `zpxe check`: every problem at once with file:line:column (includes too), the problems that
//! passed it before (HTTP and HTTPS on one port, certificates and keys that do not load, rules
//! that never match) and the warnings (loaders and menu files missing under the root).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{require, run, zpxe_bin};

/// `zpxe check -c FILE`: exit code, stdout, stderr.
fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(zpxe_bin())
        .args(["check", "-c"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("zpxe check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn every_problem_at_once_with_positions_in_each_file() {
    let dir = tempfile::tempdir().expect("dir");
    let main = dir.path().join("zpxe.toml");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::write(
        &main,
        format!(
            "[server]\nroot = {:?}\n\n[ports]\ntfpt = 69\nhttp = \"eighty\"\n\n\
             [tftp]\nretries = -1\n",
            root.display().to_string()
        ),
    )
    .expect("main");
    let d = dir.path().join("conf.d");
    std::fs::create_dir(&d).expect("conf.d");
    // Dotted and inline keys, in an include.
    std::fs::write(
        d.join("10-ports.toml"),
        "services.web = true\nports = { web = 8051, bogus = 1 }\n",
    )
    .expect("include");
    let (code, out, err) = check(&main);
    assert_eq!(code, 2, "{out}{err}");
    let p = lines(&err);
    let m = main.display();
    let inc = d.join("10-ports.toml");
    let inc = inc.display();
    assert_eq!(p.len(), 4, "{err}");
    assert!(
        p.iter()
            .any(|l| l.starts_with(&format!("{m}:5:1: ")) && l.contains("tfpt")),
        "{err}"
    );
    assert!(
        p.iter().any(|l| l.starts_with(&format!("{m}:6:8: "))),
        "{err}"
    );
    assert!(
        p.iter().any(|l| l.starts_with(&format!("{m}:9:11: "))),
        "{err}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with(&format!("{inc}:2:23: ")) && l.contains("bogus")),
        "{err}"
    );
}

#[test]
fn includes_merge_tables_append_rules_and_refuse_a_key_set_twice() {
    let dir = tempfile::tempdir().expect("dir");
    let main = dir.path().join("zpxe.toml");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::write(
        &main,
        format!(
            "[server]\nroot = {:?}\n[ports]\nhttp = 9050\n\
             [[boot.rule]]\nmac = \"52:54:00:00:00:01\"\nloader = \"a.efi\"\n",
            root.display().to_string()
        ),
    )
    .expect("main");
    let d = dir.path().join("conf.d");
    std::fs::create_dir(&d).expect("conf.d");
    std::fs::write(
        d.join("20-more.toml"),
        "[ports]\nweb = 9051\n[[boot.rule]]\nmac = \"52:54:00:00:00:02\"\nloader = \"b.efi\"\n",
    )
    .expect("include");
    // Not included: not .toml, hidden.
    std::fs::write(d.join("notes.txt"), "garbage = [").expect("txt");
    std::fs::write(d.join(".hidden.toml"), "garbage = [").expect("hidden");
    let (code, out, err) = check(&main);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("20-more.toml"), "{out}");

    // The appended rule is the second: explain finds it there.
    let out = Command::new(zpxe_bin())
        .args([
            "explain",
            "--json",
            "--mac",
            "52:54:00:00:00:02",
            "--arch",
            "7",
        ])
        .args(["--server", "10.0.0.1", "-c"])
        .arg(&main)
        .output()
        .expect("explain");
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(e["decision"]["by"], "boot.rule[1]", "{e:#}");
    assert_eq!(e["reply"]["file"], "b.efi");
    assert_eq!(
        e["decision"]["rule"]["at"],
        format!("{}:3:1", d.join("20-more.toml").display())
    );
    assert_eq!(e["request"]["port"], 67);

    // A key set in two files names both.
    std::fs::write(d.join("30-again.toml"), "\n[ports]\nhttp = 9060\n").expect("again");
    let (code, _, err) = check(&main);
    assert_eq!(code, 2);
    let again = d.join("30-again.toml");
    assert!(
        err.starts_with(&format!(
            "{}:3:1: ports.http is set twice: here and at {}:4:1",
            again.display(),
            main.display()
        )),
        "{err}"
    );
}

#[test]
fn https_on_the_http_port_bad_certificates_and_missing_files() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::write(root.join("undionly.kpxe"), b"x").expect("loader");
    std::fs::create_dir(root.join("Boot")).expect("Boot");
    std::fs::write(root.join("Boot/bcd"), b"x").expect("bcd");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ok, log) = run(
        Command::new(require("openssl"))
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=zpxe-check"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    );
    assert!(ok, "{log}");
    let main = dir.path().join("zpxe.toml");
    let write = |tls: &str| {
        std::fs::write(
            &main,
            format!(
                "[server]\nroot = {:?}\n[ports]\nhttp = 8443\n{tls}\n\
                 [menu]\n[[menu.entries]]\nid = \"winpe\"\nlabel = \"WinPE\"\n\
                 kind = {{ type = \"winpe\", wimboot = \"wimboot\", bcd = \"Boot/BCD\", \
                 boot-sdi = \"Boot/boot.sdi\", boot-wim = \"sources/boot.wim\" }}\n",
                root.display().to_string()
            ),
        )
        .expect("config");
    };
    let tls = |c: &Path, k: &Path| {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nport = 8443",
            c.display().to_string(),
            k.display().to_string()
        )
    };
    let m = main.display().to_string();

    // HTTPS on the HTTP port: an error at tls.port.
    write(&tls(&cert, &key));
    let (code, _, err) = check(&main);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{m}:8:1: tls.port and ports.http are both 8443"))),
        "{err}"
    );
    // Missing loaders and menu files are warnings, with positions: Boot/BCD is found
    // ignoring case, undionly.kpxe is there.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
    for missing in [
        "ipxe.efi",
        "ipxe-arm64.efi",
        "wimboot",
        "boot.sdi",
        "boot.wim",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(missing)),
            "{missing}: {err}"
        );
    }
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("undionly") || w.contains("BCD")),
        "{err}"
    );
    // The file's own key, inside the inline table.
    assert!(
        warnings.iter().any(|w| w.starts_with(&format!(
            "{m}:13:36: warning: menu.entries[0].kind.wimboot: entry \"winpe\" file wimboot"
        ))),
        "{err}"
    );
    // Defaults not in the file: the loaders of [boot] (ipxe.efi for efi32, efi64 and
    // http-boot; ipxe-arm64.efi for arm64 and http-boot-arm64), then the entry's files.
    assert_eq!(warnings.len(), 8, "{err}");

    // An empty certificate, a key that is not PEM, a key of another certificate.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"").expect("empty");
    let fixed = |t: String| t.replace("port = 8443", "port = 9443");
    write(&fixed(tls(&empty, &cert)));
    let (code, _, err) = check(&main);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{m}:6:8: tls.cert")) && err.contains("no PEM certificate"),
        "{err}"
    );
    assert!(err.contains(&format!("{m}:7:7: tls.key")), "{err}");

    let (other_cert, other_key) = (dir.path().join("o.pem"), dir.path().join("ok.pem"));
    let (ok, log) = run(
        Command::new(require("openssl"))
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=zpxe-other"])
            .arg("-keyout")
            .arg(&other_key)
            .arg("-out")
            .arg(&other_cert),
        Duration::from_secs(30),
    );
    assert!(ok, "{log}");
    write(&fixed(tls(&cert, &other_key)));
    let (code, _, err) = check(&main);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not fit the certificate"), "{err}");

    // All fixed: ok, with the warnings still printed.
    write(&fixed(tls(&cert, &key)));
    let (code, out, err) = check(&main);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (8 warnings)"), "{out}{err}");
}

#[test]
fn rules_that_can_never_match() {
    let dir = tempfile::tempdir().expect("dir");
    let main = dir.path().join("zpxe.toml");
    std::fs::write(
        &main,
        "[server]\nroot = \"/tmp\"\n\
         [boot]\nignore-macs = [\"52:54:00:00:00:99\"]\n\
         [[boot.rule]]\nsubnet = \"10.0.0.0/8\"\nloader = \"a.efi\"\n\
         [[boot.rule]]\nsubnet = \"10.1.0.0/16\"\narch = 7\nloader = \"b.efi\"\n\
         [[boot.rule]]\nmac = \"52:54:00:00:00:99\"\nloader = \"c.efi\"\n\
         [[boot.rule]]\nmac = \"52:54:00:00:00:01\"\nloader = \"d.efi\"\n\
         [menu]\n[[menu.entries]]\nid = \"x\"\nlabel = \"X\"\nkind = { type = \"exit\" }\n\
         [[menu.rules]]\nentry = \"x\"\n\
         [[menu.rules]]\narch = \"efi\"\nentry = \"x\"\n\
         [[menu.rules]]\narch = \"EFI\"\nmac = \"52:54:00:00:00:01\"\nentry = \"x\"\n",
    )
    .expect("config");
    let (code, _, err) = check(&main);
    assert_eq!(code, 2, "{err}");
    let m = main.display();
    let p: Vec<&str> = lines(&err)
        .into_iter()
        .filter(|l| !l.contains(": warning: "))
        .collect();
    assert_eq!(p.len(), 4, "{err}");
    assert!(
        p[0].starts_with(&format!(
            "{m}:8:1: boot.rule[1] can never match: boot.rule[0]"
        )),
        "{err}"
    );
    assert!(
        p[1].starts_with(&format!(
            "{m}:12:1: boot.rule[2] can never match: every client"
        )),
        "{err}"
    );
    assert!(
        p[2].contains("menu.rules[0] can never match: it names no mac"),
        "{err}"
    );
    assert!(
        p[3].contains("menu.rules[2] can never match: menu.rules[1]"),
        "{err}"
    );
}

/// Rule criteria are parsed when the file is read: a bad value in a list or a prefix, in the
/// main file or an include, is reported where it is written; the example configuration's
/// rules, uncommented, pass.
#[test]
fn rule_lists_and_prefixes_are_checked_where_written() {
    let dir = tempfile::tempdir().expect("dir");
    let main = dir.path().join("zpxe.toml");
    std::fs::write(
        &main,
        "[server]\nroot = \"/tmp\"\n\
         [[boot.rule]]\nmac = [\"52:54:00:00:00:01\", \"52:54:00:00:00:0g\"]\nloader = \"a.efi\"\n",
    )
    .expect("config");
    let d = dir.path().join("conf.d");
    std::fs::create_dir(&d).expect("conf.d");
    std::fs::write(
        d.join("20-menu.toml"),
        "[[menu.rules]]\nmac-prefix = [\"00:50:56\", \"00:50\", \"00:50:56:aa:bb:cc\"]\n\
         entry = \"x\"\n[[menu.rules]]\nsubnet = \"10.0.0.0/40\"\nentry = \"x\"\n",
    )
    .expect("include");
    let (code, out, err) = check(&main);
    assert_eq!(code, 2, "{out}{err}");
    let p = lines(&err);
    let (m, inc) = (main.display(), d.join("20-menu.toml"));
    let inc = inc.display();
    assert_eq!(p.len(), 3, "{err}");
    assert!(p[0].starts_with(&format!("{m}:4:29: ")), "{err}");
    assert!(p[1].starts_with(&format!("{inc}:2:36: ")), "{err}");
    assert!(p[2].starts_with(&format!("{inc}:5:10: ")), "{err}");

    // The example's commented rules, uncommented (with an entry the menu has), pass.
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/zpxe.toml"))
            .expect("example");
    let mut text = String::new();
    let mut in_rule = false;
    for line in example.lines() {
        let bare = line.strip_prefix("# ").unwrap_or(line);
        if bare.starts_with("[[boot.rule]]") || bare.starts_with("[[menu.rules]]") {
            in_rule = true;
        } else if !line.starts_with("# ") || bare.starts_with('[') {
            in_rule = false;
        }
        let keep = in_rule && bare.split('#').next().is_some_and(|k| !k.trim().is_empty());
        text.push_str(if keep { bare } else { line });
        text.push('\n');
    }
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let text = text.replace("/srv/zpxe", &root.display().to_string());
    assert!(text.contains("\nmac-prefix = [\"00:50:56\""), "{text}");
    // Apart from the first configuration's conf.d.
    let other = dir.path().join("example");
    std::fs::create_dir(&other).expect("dir");
    let file = other.join("zpxe.toml");
    std::fs::write(&file, text).expect("example");
    let (code, out, err) = check(&file);
    assert_eq!(code, 0, "{out}{err}");
}
