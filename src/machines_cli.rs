//! `zpxe machines list|add|rm|import`: the machine registry of a running zpxe, through its API
//! (`/api/v1/machines` on the web service, src/web/machines.rs).
//!
//! Changes need the bearer token: `--token-file FILE` or the `ZPXE_TOKEN` environment variable.
//! `import FILE.csv` is all or nothing: every line is checked here first (each problem printed
//! as `FILE:LINE: reason`), then the records go in one request that the server stores in one
//! transaction, or not at all when it finds a problem (again reported by line).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use zpxe_engine::dhcp::{ClientUuid, MacAddr};

/// Longest answer read from the server.
const MAX_ANSWER: usize = 64 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct MachinesArgs {
    /// The running zpxe's web service.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:8051",
        value_name = "URL"
    )]
    pub url: String,
    /// A file holding the bearer token (else the ZPXE_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: MachinesCommand,
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Print every registered machine.
    List {
        /// Only this group.
        #[arg(long)]
        group: Option<String>,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Register a machine, or replace its record.
    Add {
        /// Its MAC address (aa:bb:cc:dd:ee:ff).
        mac: String,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        group: String,
        /// A menu entry id to boot directly.
        #[arg(long)]
        entry: Option<String>,
        /// A loader replacing the policy's (a path below the TFTP root).
        #[arg(long)]
        loader: Option<String>,
        /// A variable for its iPXE script, NAME=VALUE; repeat for several.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// After a successful deployment, boot from local disk.
        #[arg(long)]
        boot_once: bool,
        /// Re-arm a deployed boot-once machine (state pending).
        #[arg(long)]
        rearm: bool,
    },
    /// Remove a machine's record.
    Rm {
        /// Its MAC address or UUID.
        key: String,
    },
    /// Register the machines of a CSV file (header row: mac, uuid, name, group, entry, loader,
    /// boot-once, variables as NAME=VALUE;NAME=VALUE). All or nothing.
    Import { file: PathBuf },
}

pub fn main(args: MachinesArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zpxe machines: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: MachinesArgs) -> Result<()> {
    let api = Api::new(&args.url, args.token_file.as_deref())?;
    match args.command {
        MachinesCommand::List { group, json } => list(&api, group.as_deref(), json),
        MachinesCommand::Add {
            mac,
            uuid,
            name,
            group,
            entry,
            loader,
            vars,
            boot_once,
            rearm,
        } => {
            let mac: MacAddr = mac
                .parse()
                .map_err(|_| anyhow::anyhow!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
            let mut variables = BTreeMap::new();
            for v in &vars {
                let (k, val) = v
                    .split_once('=')
                    .with_context(|| format!("--var {v:?}: give NAME=VALUE"))?;
                variables.insert(k.to_owned(), val.to_owned());
            }
            let mut body = json!({
                "name": name, "group": group, "uuid": uuid, "entry": entry, "loader": loader,
                "variables": variables, "boot-once": boot_once,
            });
            if rearm {
                body["state"] = json!("pending");
            }
            let (status, answer) =
                api.call("PUT", &format!("/api/v1/machines/{mac}"), Some(&body))?;
            check(status, &answer)?;
            println!("{} {mac}", if status == 201 { "added" } else { "updated" });
            Ok(())
        }
        MachinesCommand::Rm { key } => {
            if key.parse::<MacAddr>().is_err() && key.parse::<ClientUuid>().is_err() {
                bail!("{key:?} is neither a MAC address nor a UUID");
            }
            let (status, answer) = api.call("DELETE", &format!("/api/v1/machines/{key}"), None)?;
            check(status, &answer)?;
            println!("removed {key}");
            Ok(())
        }
        MachinesCommand::Import { file } => import(&api, &file),
    }
}

fn check(status: u16, answer: &[u8]) -> Result<()> {
    if (200..300).contains(&status) {
        Ok(())
    } else {
        bail!(
            "the server answered {status}: {}",
            String::from_utf8_lossy(answer).trim()
        )
    }
}

fn list(api: &Api, group: Option<&str>, as_json: bool) -> Result<()> {
    let mut all = Vec::new();
    loop {
        let mut path = format!("/api/v1/machines?limit=1000&offset={}", all.len());
        if let Some(g) = group {
            path.push_str("&group=");
            path.push_str(&encode(g));
        }
        let (status, answer) = api.call("GET", &path, None)?;
        check(status, &answer)?;
        let page: Value = serde_json::from_slice(&answer).context("the server's answer")?;
        let got = page["machines"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let done = got.is_empty();
        all.extend(got);
        if done || all.len() >= total {
            break;
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<17}  {:<36}  {:<16}  {:<12}  {:<12}  {:<20}  {:<9}  SOURCE",
        "MAC", "UUID", "NAME", "GROUP", "ENTRY", "LOADER", "BOOT-ONCE"
    );
    for m in &all {
        let s = |k: &str| m[k].as_str().unwrap_or("-").to_owned();
        let once = if m["boot-once"].as_bool() == Some(true) {
            s("state")
        } else {
            "-".to_owned()
        };
        // Records from the configuration's [[machine]] tables name their place; the API
        // refuses to change those.
        let source = m["source"].as_str().unwrap_or("database");
        println!(
            "{:<17}  {:<36}  {:<16}  {:<12}  {:<12}  {:<20}  {once:<9}  {source}",
            s("mac"),
            s("uuid"),
            s("name"),
            s("group"),
            s("entry"),
            s("loader"),
        );
    }
    println!("{} machines", all.len());
    Ok(())
}

/// The CSV's columns, in the API's names.
const COLUMNS: [&str; 8] = [
    "mac",
    "uuid",
    "name",
    "group",
    "entry",
    "loader",
    "boot-once",
    "variables",
];

/// Checks every line of a CSV file: the records (with their line numbers), or every problem
/// as `FILE:LINE: reason`.
pub fn parse_csv(file: &Path, text: &str) -> Result<Vec<(usize, Value)>, Vec<String>> {
    let name = file.display();
    let mut errors = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let header = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((n, l)) => break (n, l),
            None => {
                return Err(vec![format!(
                    "{name}: empty file (a header row comes first)"
                )]);
            }
        }
    };
    let cols: Vec<String> = match split_csv(header.1.trim_start_matches('\u{feff}')) {
        Ok(c) => c
            .iter()
            .map(|c| c.trim().to_ascii_lowercase().replace('_', "-"))
            .collect(),
        Err(e) => return Err(vec![format!("{name}:{}: {e}", header.0)]),
    };
    for c in &cols {
        if !COLUMNS.contains(&c.as_str()) {
            errors.push(format!(
                "{name}:{}: unknown column {c:?} (columns: {})",
                header.0,
                COLUMNS.join(", ")
            ));
        }
    }
    if !cols.iter().any(|c| c == "mac" || c == "uuid") {
        errors.push(format!(
            "{name}:{}: the header has no mac or uuid column",
            header.0
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() + errors.len() >= crate::web::machines::MAX_IMPORT {
            errors.push(format!(
                "{name}:{n}: more than {} machines in one file",
                crate::web::machines::MAX_IMPORT
            ));
            break;
        }
        match csv_record(&cols, line) {
            Ok((key, rec)) => {
                if let Some(first) = seen.insert(key.clone(), n) {
                    errors.push(format!("{name}:{n}: {key} is already on line {first}"));
                } else {
                    out.push((n, rec));
                }
            }
            Err(e) => errors.push(format!("{name}:{n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn csv_record(cols: &[String], line: &str) -> Result<(String, Value), String> {
    let fields = split_csv(line)?;
    if fields.len() != cols.len() {
        return Err(format!(
            "{} fields, the header has {}",
            fields.len(),
            cols.len()
        ));
    }
    let mut rec = serde_json::Map::new();
    let mut key = None;
    for (c, f) in cols.iter().zip(&fields) {
        let f = f.trim();
        if f.chars().any(char::is_control) {
            return Err(format!("{c}: control characters are not allowed"));
        }
        match c.as_str() {
            "mac" if !f.is_empty() => {
                let m: MacAddr = f
                    .parse()
                    .map_err(|_| format!("mac {f:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
                key = Some(m.to_string());
                rec.insert("mac".into(), json!(m.to_string()));
            }
            "uuid" if !f.is_empty() => {
                let u: ClientUuid = f
                    .parse()
                    .map_err(|_| format!("uuid {f:?} is not a UUID (8-4-4-4-12 hex digits)"))?;
                key.get_or_insert_with(|| u.to_string());
                rec.insert("uuid".into(), json!(u.to_string()));
            }
            "boot-once" => {
                let v = match f.to_ascii_lowercase().as_str() {
                    "" | "0" | "false" | "no" => false,
                    "1" | "true" | "yes" => true,
                    _ => return Err(format!("boot-once {f:?}: give true or false")),
                };
                rec.insert("boot-once".into(), json!(v));
            }
            "variables" => {
                let mut vars = serde_json::Map::new();
                for pair in f.split(';').filter(|p| !p.trim().is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("variables: {pair:?} is not NAME=VALUE"))?;
                    vars.insert(k.trim().to_owned(), json!(v));
                }
                rec.insert("variables".into(), Value::Object(vars));
            }
            "name" | "group" => {
                rec.insert(c.clone(), json!(f));
            }
            "entry" | "loader" if !f.is_empty() => {
                rec.insert(c.clone(), json!(f));
            }
            _ => {}
        }
    }
    let key = key.ok_or("no mac and no uuid")?;
    Ok((key, Value::Object(rec)))
}

/// One CSV line (RFC 4180): fields split at commas, `"quoted, ""escaped"""` fields allowed.
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field".into()),
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) if was_quoted && !c.is_whitespace() => {
                return Err("text after a closing quote".into());
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed (fields cannot span lines)".into());
    }
    out.push(cur);
    Ok(out)
}

fn import(api: &Api, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let records = match parse_csv(file, &text) {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            bail!("{} problems; nothing was imported", errors.len());
        }
    };
    let body = Value::Array(records.iter().map(|(_, r)| r.clone()).collect());
    let (status, answer) = api.call("POST", "/api/v1/machines", Some(&body))?;
    if (status == 400 || status == 409)
        && let Ok(v) = serde_json::from_slice::<Value>(&answer)
        && let Some(errors) = v["errors"].as_array()
    {
        for e in errors {
            let line = e["index"]
                .as_u64()
                .and_then(|i| records.get(i as usize))
                .map_or(0, |(n, _)| *n);
            eprintln!(
                "{}:{line}: {}",
                file.display(),
                e["error"].as_str().unwrap_or("refused")
            );
        }
        bail!(
            "the server refused {} lines; nothing was imported",
            errors.len()
        );
    }
    check(status, &answer)?;
    println!(
        "imported {} machines from {}",
        records.len(),
        file.display()
    );
    Ok(())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A minimal HTTP/1.1 client for the API: one request per connection.
struct Api {
    host: String,
    addr: String,
    token: Option<String>,
}

impl Api {
    fn new(url: &str, token_file: Option<&Path>) -> Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("--url {url:?}: give http://HOST:PORT"))?;
        let host = rest.trim_end_matches('/').to_owned();
        if host.is_empty() || host.contains('/') {
            bail!("--url {url:?}: give http://HOST:PORT (no path)");
        }
        let addr = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the token file {}", f.display()))?
                    .trim_end()
                    .to_owned(),
            ),
            None => std::env::var("ZPXE_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        Ok(Self { host, addr, token })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>)> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let addr = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.addr))?
            .next()
            .with_context(|| format!("{} has no address", self.addr))?;
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
            .with_context(|| format!("connecting to zpxe at {addr} (is it running? --url)"))?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.host
        );
        if method != "GET" {
            match &self.token {
                Some(t) => req.push_str(&format!("Authorization: Bearer {t}\r\n")),
                None => bail!("changes need the bearer token: --token-file FILE or ZPXE_TOKEN"),
            }
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(&body)?;
        let mut answer = Vec::new();
        s.take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .context("reading the answer")?;
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("the server's answer has no HTTP head")?;
        let head = String::from_utf8_lossy(&answer[..end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("the server's answer has no status")?;
        Ok((status, answer[end + 4..].to_vec()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_are_checked_with_their_numbers() {
        let text = "mac,name,boot-once,variables\n\
                    52:54:00:00:00:01,pc1,true,os=w11;lang=en\n\
                    \n\
                    52:54:00:00:00:zz,pc2,false,\n\
                    \"52:54:00:00:00:03\",\"pc, three\",no,\n\
                    52:54:00:00:00:01,again,,\n\
                    52:54:00:00:00:05,pc5,maybe,\n";
        let e = parse_csv(Path::new("m.csv"), text).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("m.csv:4: mac"), "{e:?}");
        assert!(
            e[1].starts_with("m.csv:6: 52:54:00:00:00:01 is already on line 2"),
            "{e:?}"
        );
        assert!(e[2].starts_with("m.csv:7: boot-once"), "{e:?}");
        let good = "MAC,Name,Group\n52-54-00-00-00-01,pc1,lab\n\"52:54:00:00:00:03\",\"pc, \"\"three\"\"\",lab\n";
        let r = parse_csv(Path::new("m.csv"), good).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 2);
        assert_eq!(r[0].1["mac"], "52:54:00:00:00:01");
        assert_eq!(r[1].1["name"], "pc, \"three\"");
        assert!(parse_csv(Path::new("m.csv"), "name\nx\n").is_err());
        assert!(parse_csv(Path::new("m.csv"), "mac,colour\n").is_err());
        assert!(split_csv("\"open").is_err());
        assert!(split_csv("a\"b").is_err());
    }
}
