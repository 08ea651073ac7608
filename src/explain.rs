//! `zpxe explain` and `/api/v1/explain`: "why won't this machine PXE?".
//!
//! The answer is not worked out beside the server: a request is built from the client's facts
//! (a DISCOVER on the DHCP port, or a REQUEST on 4011), handed to the engine's own
//! [`ProxyDhcp`] with the configuration `zpxe serve` gives it, and the reply it writes is
//! parsed back. What decided is the engine's own answer for the same request: the facts its
//! responder derives ([`client_facts`]), the rule and keys [`zpxe_engine::dhcp::BootPolicy::decide_explained`]
//! used, and the menu rule
//! [`zpxe_engine::http::BootMenu::rule_for`] picks. Nothing here matches rules itself, so
//! explain cannot disagree with what is served. For an iPXE client the script comes from
//! [`zpxe_engine::http::BootMenu::generate`], called as the HTTP service calls it for the URL in the reply.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Serialize;
use zpxe_engine::DatagramMeta;
use zpxe_engine::Payload;
use zpxe_engine::dhcp::options::code;
use zpxe_engine::dhcp::{
    BootKind, BootOp, ClientUuid, DhcpEvent, DhcpOptions, DhcpPort, DhcpRepr, IgnoreReason,
    MacAddr, MessageType, NextServerFrom, PolicyRefusal, ProxyDhcp, ProxyDhcpConfig,
    PxeVendorOptions, client_facts,
};
use zpxe_engine::http::ipxe::BootQuery;

use crate::config::Config;

/// What is known about the client, as `zpxe explain` takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The client's MAC address (aa:bb:cc:dd:ee:ff).
    #[arg(long)]
    pub mac: MacAddr,
    /// Option 93: a number (0 BIOS, 6 IA32 UEFI, 7 and 9 x64 UEFI, 11 ARM64 UEFI, 16 x64 UEFI
    /// HTTP, 19 ARM64 UEFI HTTP) or one of bios, efi32, efi64, efibc, arm64, x64-http,
    /// arm64-http.
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<u16>,
    /// Option 97, the machine UUID as dmidecode shows it.
    #[arg(long)]
    pub uuid: Option<ClientUuid>,
    /// The relay agent (giaddr) the request came through.
    #[arg(long, value_name = "IP")]
    pub relay: Option<Ipv4Addr>,
    /// Option 77, e.g. `iPXE` for a client already running iPXE.
    #[arg(long, value_name = "CLASS")]
    pub user_class: Option<String>,
    /// Option 60 (default: `PXEClient:Arch:NNNNN:UNDI:002001`, or `HTTPClient:...` for
    /// architectures 16 and 19).
    #[arg(long, value_name = "CLASS")]
    pub vendor_class: Option<String>,
    /// The client's own address (ciaddr), once it has one.
    #[arg(long, value_name = "IP")]
    pub client_ip: Option<Ipv4Addr>,
    /// Ask as a REQUEST to the PXE port (4011) instead of a DISCOVER to the DHCP port.
    #[arg(long)]
    pub pxe: bool,
    /// The server address the request arrives on (default: server.advertise, else the first
    /// server.listen address).
    #[arg(long, value_name = "IP")]
    pub server: Option<Ipv4Addr>,
}

/// `zpxe explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// TOML configuration file (default: the one `zpxe serve` reads).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Print JSON (the same as `/api/v1/explain`).
    #[arg(long)]
    pub json: bool,
}

fn parse_arch(text: &str) -> Result<u16, String> {
    let named = match text.to_ascii_lowercase().as_str() {
        "bios" => Some(0),
        "efi32" | "ia32" => Some(6),
        "efi64" | "x64" => Some(7),
        "efibc" => Some(9),
        "arm64" => Some(11),
        "x64-http" | "http" => Some(16),
        "arm64-http" => Some(19),
        _ => None,
    };
    match named {
        Some(a) => Ok(a),
        None => text.parse().map_err(|_| {
            format!(
                "{text:?} is not an architecture: a number 0-65535 or one of bios, efi32, \
                 efi64, efibc, arm64, x64-http, arm64-http"
            )
        }),
    }
}

/// Where in the configuration each `[[boot.rule]]` and `[[menu.rules]]` is (`file:line:col`),
/// by index; empty when unknown.
#[derive(Debug, Clone, Default)]
struct RulePositions {
    boot: Vec<String>,
    menu: Vec<String>,
}

/// The answer, as printed with `--json` and served by `/api/v1/explain`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Explanation {
    pub facts: Facts,
    pub request: RequestShown,
    pub decision: Decision,
    /// The reply zpxe sends; `None` when it sends none.
    pub reply: Option<ReplyShown>,
    /// For a client that gets an iPXE script URL: what that URL serves.
    pub ipxe: Option<IpxeShown>,
    /// `zpxe explain` with `boot.hook-url`: what the request handler was asked and answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookShown>,
}

/// The request handler's answer for this client, asked at once by `zpxe explain` (the server
/// asks in the background and answers from its cache; see src/serve/hook.rs).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookShown {
    pub url: String,
    /// The facts POSTed, as the server sends them.
    pub asked: serde_json::Value,
    /// `boot`, `ignore`, `default`, or `failed` (the server then answers by static policy).
    pub action: &'static str,
    /// Why the lookup failed (timeout, unreachable, a refused answer).
    pub error: Option<String>,
    pub loader: Option<String>,
    pub script_url: Option<String>,
    pub entry: Option<String>,
    pub variables: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Facts {
    pub mac: String,
    pub uuid: Option<String>,
    pub arch: Option<u16>,
    pub relay: Option<Ipv4Addr>,
    pub client_ip: Option<Ipv4Addr>,
    pub user_class: Option<String>,
    pub vendor_class: String,
    /// User class `iPXE`: the client gets the script, not a loader.
    pub ipxe: bool,
    pub http_client: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestShown {
    pub message: &'static str,
    pub port: u16,
    /// The address it arrives on, named in the reply as the server.
    pub server: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub answered: bool,
    /// Why there is no reply.
    pub refusal: Option<String>,
    /// What decided: `boot.ignore-macs`, `boot.ignore-uuids`, `boot.rule[N]` or `boot`.
    pub by: String,
    /// The rule that matched first, if any.
    pub rule: Option<RuleShown>,
    /// The key the boot file came from, e.g. `boot.efi64` or `boot.rule[2].loader`.
    pub boot_file_from: Option<String>,
    /// `boot.next-server`, `boot.rule[N].next-server`, or `arrival address`.
    pub next_server_from: Option<String>,
    /// `loader` (TFTP), `ipxe-script` or `http-boot`.
    pub kind: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleShown {
    pub index: usize,
    pub at: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplyShown {
    pub message: String,
    pub to: SocketAddr,
    pub from_port: u16,
    pub broadcast: bool,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// `siaddr`.
    pub next_server: Ipv4Addr,
    /// The `file` field.
    pub file: String,
    /// Option 67.
    pub bootfile_name: Option<String>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 43, hex.
    pub vendor_specific: Option<String>,
    /// Option 43 as PXE reads it.
    pub pxe: Option<PxeShown>,
    pub giaddr: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PxeShown {
    pub discovery_control: Option<u8>,
    /// `server-type.layer` of the boot item echoed.
    pub boot_item: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IpxeShown {
    pub url: String,
    /// Why no script is shown (a URL that is not zpxe's `/boot.ipxe` or `/menu.ipxe`), or who
    /// changed it.
    pub note: Option<String>,
    /// What decided the script: `menu`, `menu.rules[N]` or `machine registry`.
    pub by: Option<String>,
    /// The `[[menu.rules]]` that picked an entry, if any.
    pub menu_rule: Option<RuleShown>,
    /// The entry booted without a menu, or `None` for the menu.
    pub entry: Option<String>,
    pub script: Option<String>,
}

/// The client's facts turned into the request firmware would send.
fn build_request(c: &ClientArgs) -> (DhcpRepr, String) {
    let http = matches!(c.arch, Some(16 | 19));
    let vendor_class = c.vendor_class.clone().unwrap_or_else(|| {
        // PXE 2.1 section 2.2.5 and UEFI 2.10 section 24.7.2: "PXEClient:Arch:xxxxx:UNDI:yyyzzz"
        // and its HTTP boot twin.
        let (class, undi) = if http {
            ("HTTPClient", "003000")
        } else {
            ("PXEClient", "002001")
        };
        match c.arch {
            Some(a) => format!("{class}:Arch:{a:05}:UNDI:{undi}"),
            None => class.to_owned(),
        }
    });
    let message_type = if c.pxe {
        MessageType::Request
    } else {
        MessageType::Discover
    };
    let options = DhcpOptions {
        message_type: Some(message_type),
        vendor_class: Some(vendor_class.clone().into_bytes()),
        client_arch: c.arch.into_iter().collect(),
        client_uuid: c.uuid,
        user_class: c.user_class.clone().map(String::into_bytes),
        client_ndi: Some([1, 3, 16]),
        parameter_request_list: Some(vec![
            code::SUBNET_MASK,
            code::ROUTER,
            code::VENDOR_SPECIFIC,
            code::SERVER_ID,
            code::VENDOR_CLASS,
            code::TFTP_SERVER_NAME,
            code::BOOTFILE_NAME,
            code::CLIENT_ARCH,
            code::CLIENT_MACHINE_ID,
        ]),
        ..Default::default()
    };
    let relay = c.relay.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let request = DhcpRepr {
        op: BootOp::Request,
        hops: u8::from(c.relay.is_some()),
        xid: 0x7a70_7865,
        secs: 0,
        broadcast: !c.pxe && c.relay.is_none() && c.client_ip.is_none(),
        ciaddr: c.client_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: relay,
        client_mac: c.mac,
        server_name: Vec::new(),
        boot_file: Vec::new(),
        options,
    };
    (request, vendor_class)
}

/// The server address a request would arrive on, when `--server` is not given.
pub fn default_server(config: &Config) -> Option<Ipv4Addr> {
    crate::serve::proxy_config(config).server_ip
}

/// Explains what zpxe, running `config`, answers the client `c`.
pub fn explain(config: &Config, c: &ClientArgs) -> Explanation {
    let (registry, served) = crate::serve::offline_registry(config);
    explain_with(
        config,
        crate::serve::proxy_config(config),
        Some(registry),
        Some(&*served),
        c,
        true,
    )
}

/// [`explain`] with the responder's settings as a running server holds them (after reloads),
/// its machine registry, and its HTTP service's answer to a script request.
pub fn explain_with(
    config: &Config,
    mut proxy_config: ProxyDhcpConfig,
    registry: Option<Arc<crate::db::Registry>>,
    served: Option<&ServedScript>,
    c: &ClientArgs,
    ask_hook: bool,
) -> Explanation {
    // Which record decides for this client, if one does: a `[[machine]]` record names its
    // place in the configuration.
    let record = registry.as_ref().and_then(|r| {
        let snap = r.load();
        let rec = snap.get(c.mac, c.uuid)?;
        Some(match &rec.source {
            Some(at) => format!("machine record at {at}"),
            None => "machine registry".to_owned(),
        })
    });
    // With `ask_hook` and a hook configured, a client without a record that the policy
    // answers is looked up now, within the hook's timeout.
    let hook = (ask_hook && config.hook.hook_url.is_some()).then(|| {
        let entries = config.menu.entries.iter().map(|e| e.id.clone()).collect();
        (config.hook.clone(), entries)
    });
    let overrides = Arc::new(crate::serve::registry::ExplainOverrides {
        registry,
        hook,
        asked: std::sync::Mutex::new(None),
    });
    let positions = &RulePositions {
        boot: config.sources.positions_of("boot.rule"),
        menu: config.sources.positions_of("menu.rules"),
    };
    let server = c.server.or(proxy_config.server_ip);
    if c.server.is_some() {
        proxy_config.server_ip = c.server;
    }
    let (request, vendor_class) = build_request(c);
    let port = if c.pxe { DhcpPort::Pxe } else { DhcpPort::Dhcp };
    let port_number = match port {
        DhcpPort::Pxe => config.ports.pxe,
        _ => config.ports.dhcp,
    };
    let remote = match (c.relay, c.client_ip) {
        // A relay sends from its own address, to the server's DHCP port.
        (Some(relay), _) => SocketAddr::V4(SocketAddrV4::new(relay, config.ports.dhcp)),
        (None, Some(ip)) => {
            let from = if c.pxe { config.ports.pxe } else { 68 };
            SocketAddr::V4(SocketAddrV4::new(ip, from))
        }
        (None, None) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)),
    };
    let meta = DatagramMeta {
        remote,
        local_ip: server.map(IpAddr::V4),
        ifindex: None,
    };
    let policy = proxy_config.policy.clone();
    let http_port = proxy_config.http_port;
    // The engine's own facts for this request, with the registry group the responder looks
    // up when a rule names groups.
    let http_client = request
        .options
        .vendor_class
        .as_deref()
        .is_some_and(|v| v.starts_with(b"HTTPClient"));
    let mut rule_facts = client_facts(&meta, &request, http_client);
    if policy.uses_groups() {
        use zpxe_engine::dhcp::ClientOverrides as _;
        rule_facts.group = overrides.group(&rule_facts);
    }
    let mut engine = ProxyDhcp::new(proxy_config);
    engine.set_overrides(Arc::clone(&overrides) as _);
    engine.handle_datagram(Instant::now(), port, meta, &request.to_bytes());
    let mut buf = vec![0u8; 4096];
    let transmit = engine.poll_transmit(Instant::now(), &mut buf);
    let event = engine.poll_event();

    let ipxe = request
        .options
        .user_classes()
        .iter()
        .any(|class| *class == b"iPXE");
    let facts = Facts {
        mac: c.mac.to_string(),
        uuid: c.uuid.map(|u| u.to_string()),
        arch: c.arch,
        relay: c.relay,
        client_ip: c.client_ip,
        user_class: c.user_class.clone(),
        vendor_class: vendor_class.clone(),
        ipxe,
        http_client: vendor_class.starts_with("HTTPClient"),
    };
    let request_shown = RequestShown {
        message: if c.pxe { "REQUEST" } else { "DISCOVER" },
        port: port_number,
        server,
    };

    // The engine's decision for this request (the responder made the same).
    let decided = policy.decide_explained(
        &rule_facts,
        server.unwrap_or(Ipv4Addr::UNSPECIFIED),
        http_port,
    );
    let rule_index = policy.rule_index(&rule_facts);
    let rule = rule_index.map(|index| RuleShown {
        index,
        at: positions.boot.get(index).cloned(),
    });
    let refusal = match &event {
        Some(DhcpEvent::Ignored { reason, .. }) => Some(reason.clone()),
        _ => None,
    };
    let by = match &refusal {
        Some(IgnoreReason::Policy(PolicyRefusal::IgnoredMac)) => "boot.ignore-macs".to_owned(),
        Some(IgnoreReason::Policy(PolicyRefusal::IgnoredUuid)) => "boot.ignore-uuids".to_owned(),
        _ => match rule_index {
            Some(i) => format!("boot.rule[{i}]"),
            None => "boot".to_owned(),
        },
    };

    let reply = transmit.and_then(|(out_port, t)| {
        let Payload::Bytes { len } = t.payload else {
            return None;
        };
        let parsed = DhcpRepr::parse_bytes(buf.get(..len)?).ok()?;
        Some(show_reply(&parsed, t.destination, out_port, config))
    });
    let decision = reply.as_ref().and(decided.as_ref().ok());
    let kind = decision.map(|d| match d.target.kind {
        BootKind::IpxeScript => "ipxe-script",
        BootKind::HttpBoot => "http-boot",
        _ => "loader",
    });
    let rule_key = |key: &str| format!("boot.rule[{}].{key}", rule_index.unwrap_or(0));
    let boot_file_from = decision.map(|d| {
        if d.boot_file_from_rule {
            rule_key(d.boot_file_key)
        } else {
            format!("boot.{}", d.boot_file_key)
        }
    });
    let next_server_from = decision.map(|d| match d.next_server_from {
        NextServerFrom::Rule => rule_key("next-server"),
        NextServerFrom::Policy => "boot.next-server".to_owned(),
        _ => "arrival address".to_owned(),
    });
    // The file the reply names against the one the policy decided: a difference is the
    // machine registry's (a loader override).
    let replaced = match (&reply, decision) {
        (Some(r), Some(d)) => {
            let sent = r
                .bootfile_name
                .as_deref()
                .filter(|_| r.file.is_empty())
                .unwrap_or(&r.file);
            d.target.kind == BootKind::Loader && sent != d.target.boot_file
        }
        _ => false,
    };
    let asked = overrides
        .asked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let hook_shown = asked.map(|a| show_hook(config, a));
    // The hook decided when it said ignore, or its loader or script URL is what was sent.
    let hook_decided = hook_shown.as_ref().filter(|h| {
        h.action == "ignore"
            || (h.action == "boot"
                && reply.as_ref().is_some_and(|r| {
                    let sent = r.bootfile_name.as_deref().unwrap_or(&r.file);
                    h.loader.as_deref() == Some(sent) || h.script_url.as_deref() == Some(sent)
                }))
    });
    let (by, boot_file_from) = if let Some(h) = hook_decided {
        let from = (h.action == "boot").then(|| {
            let key = if h.loader.is_some() {
                "loader"
            } else {
                "script-url"
            };
            format!("hook ({key} from {})", h.url)
        });
        (format!("hook {}", h.url), from)
    } else if replaced {
        let record = record
            .clone()
            .unwrap_or_else(|| "machine registry".to_owned());
        (record.clone(), Some(format!("{record} (loader override)")))
    } else {
        (by, boot_file_from)
    };
    let ipxe_shown = match (&reply, kind) {
        (Some(r), Some("ipxe-script")) => {
            let url = r.bootfile_name.clone().unwrap_or_else(|| r.file.clone());
            Some(explain_script(
                config,
                positions,
                &url,
                c.client_ip,
                served,
                record.as_deref(),
            ))
        }
        _ => None,
    };
    Explanation {
        facts,
        request: request_shown,
        decision: Decision {
            answered: reply.is_some(),
            refusal: refusal.as_ref().map(reason_text).or_else(|| {
                reply
                    .is_none()
                    .then(|| "the engine wrote no reply".to_owned())
            }),
            by,
            rule,
            boot_file_from,
            next_server_from,
            kind,
        },
        reply,
        ipxe: ipxe_shown,
        hook: hook_shown,
    }
}

/// What the hook was asked and answered, for the explanation.
fn show_hook(config: &Config, asked: crate::serve::registry::HookAsked) -> HookShown {
    use crate::serve::hook::Verdict;
    let mut shown = HookShown {
        url: config.hook.hook_url.clone().unwrap_or_default(),
        asked: asked.facts,
        action: "failed",
        error: None,
        loader: None,
        script_url: None,
        entry: None,
        variables: Default::default(),
    };
    match asked.outcome {
        Ok(Verdict::Default) => shown.action = "default",
        Ok(Verdict::Ignore) => shown.action = "ignore",
        Ok(Verdict::Boot { record, script_url }) => {
            let record = *record;
            shown.action = "boot";
            shown.loader = record.loader;
            shown.entry = record.entry;
            shown.variables = record.variables;
            shown.script_url = script_url;
        }
        Err(e) => shown.error = Some(e),
    }
    shown
}

fn show_reply(reply: &DhcpRepr, to: SocketAddr, port: DhcpPort, config: &Config) -> ReplyShown {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let pxe = reply
        .options
        .vendor_specific
        .as_deref()
        .and_then(|raw| PxeVendorOptions::parse(raw).ok())
        .map(|p| PxeShown {
            discovery_control: p.discovery_control,
            boot_item: p
                .boot_item
                .map(|i| format!("{}.{}", i.server_type, i.layer)),
        });
    ReplyShown {
        message: message_name(reply.options.message_type),
        to,
        from_port: match port {
            DhcpPort::Pxe => config.ports.pxe,
            _ => config.ports.dhcp,
        },
        broadcast: reply.broadcast,
        server_id: reply.options.server_id,
        next_server: reply.siaddr,
        file: text(&reply.boot_file),
        bootfile_name: reply.options.bootfile_name.as_deref().map(text),
        vendor_class: reply.options.vendor_class.as_deref().map(text),
        vendor_specific: reply.options.vendor_specific.as_deref().map(hex),
        pxe,
        giaddr: reply.giaddr,
    }
}

/// Why a request got no answer, for people: the engine's reasons without Rust's `Some(..)`.
pub fn reason_text(reason: &IgnoreReason) -> String {
    match reason {
        IgnoreReason::Policy(PolicyRefusal::UnsupportedArch(arch)) => match arch {
            Some(a) => format!("no boot file configured for client architecture {a}"),
            None => "the client names no architecture (option 93 or PXEClient:Arch)".to_owned(),
        },
        IgnoreReason::UnexpectedMessage(kind) => format!(
            "message type {} is not answered on this port",
            message_name(*kind)
        ),
        other => other.to_string(),
    }
}

/// Lowercase hex, for option bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `OFFER`, `ACK`, ... as in RFC 2132 section 9.6.
pub fn message_name(kind: Option<MessageType>) -> String {
    match kind {
        Some(MessageType::Discover) => "DISCOVER".into(),
        Some(MessageType::Offer) => "OFFER".into(),
        Some(MessageType::Request) => "REQUEST".into(),
        Some(MessageType::Decline) => "DECLINE".into(),
        Some(MessageType::Ack) => "ACK".into(),
        Some(MessageType::Nak) => "NAK".into(),
        Some(MessageType::Release) => "RELEASE".into(),
        Some(MessageType::Inform) => "INFORM".into(),
        Some(MessageType::Unknown(n)) => format!("type {n}"),
        None => "none".into(),
        Some(_) => "other".into(),
    }
}

/// What the script URL in the reply serves, as the HTTP service builds it (`BootSite` in
/// src/serve/http.rs): base URL and report URL from the Host the client names (the URL's).
fn explain_script(
    config: &Config,
    positions: &RulePositions,
    url: &str,
    client_ip: Option<Ipv4Addr>,
    served: Option<&ServedScript>,
    record: Option<&str>,
) -> IpxeShown {
    let mut shown = IpxeShown {
        url: url.to_owned(),
        note: None,
        by: None,
        menu_rule: None,
        entry: None,
        script: None,
    };
    let Some(rest) = url.strip_prefix("http://") else {
        shown.note = Some("not an http:// URL of zpxe's: the script comes from elsewhere".into());
        return shown;
    };
    let (authority, path_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let menu_only = match path {
        "/boot.ipxe" => false,
        "/menu.ipxe" => true,
        _ => {
            shown.note = Some(format!(
                "{path} is not zpxe's /boot.ipxe or /menu.ipxe: the script comes from that file"
            ));
            return shown;
        }
    };
    if !config.services.http {
        shown.note = Some("services.http is off: nothing here serves the script".into());
        return shown;
    }
    let mut boot_query = BootQuery::parse(query);
    // The script request comes from the client's own address.
    boot_query.peer = client_ip;
    let menu = &config.menu;
    shown.by = Some("menu".to_owned());
    if !menu_only && let Some((index, entry)) = menu.rule_for(&boot_query) {
        shown.entry = Some(entry.id.clone());
        shown.menu_rule = Some(RuleShown {
            index,
            at: positions.menu.get(index).cloned(),
        });
        shown.by = Some(format!("menu.rules[{index}]"));
    }
    let host = authority
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(h, _)| h);
    let report = config
        .services
        .web
        .then(|| format!("http://{host}:{}/report", config.ports.web));
    let generated = menu.generate(
        &boot_query,
        &format!("http://{authority}"),
        report.as_deref(),
        menu_only,
    );
    // A running server: its HTTP handler's own answer, which a registry record may change.
    let head = format!("GET {path_query} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    match served.and_then(|serve| serve(head.as_bytes(), client_ip)) {
        Some(script) if script != generated => {
            let by = record.unwrap_or("machine registry");
            shown.by = Some(by.to_owned());
            shown.note = Some(format!(
                "the {by} decides this client's script (its entry, variables or boot-once exit)"
            ));
            shown.entry = None;
            shown.menu_rule = None;
            shown.script = Some(script);
        }
        _ => shown.script = Some(generated),
    }
    shown
}

/// The explanation as text for a person.
pub fn render_text(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let f = &e.facts;
    let _ = writeln!(
        s,
        "client {} arch {} uuid {} relay {} user-class {} vendor-class {:?}",
        f.mac,
        f.arch.map_or("-".into(), |a| a.to_string()),
        f.uuid.as_deref().unwrap_or("-"),
        f.relay.map_or("-".into(), |r| r.to_string()),
        f.user_class.as_deref().unwrap_or("-"),
        f.vendor_class
    );
    let _ = writeln!(
        s,
        "request {} to port {} on {}",
        e.request.message,
        e.request.port,
        e.request
            .server
            .map_or("(no server address: give --server)".into(), |a| a
                .to_string())
    );
    let d = &e.decision;
    if let Some(rule) = &d.rule {
        let _ = writeln!(
            s,
            "matched boot.rule[{}]{}",
            rule.index,
            rule.at
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(s, "matched no boot rule: the [boot] defaults apply");
    }
    if let Some(h) = &e.hook {
        let _ = write!(s, "hook {} answered {}", h.url, h.action);
        match (&h.error, h.action) {
            (Some(err), _) => {
                let _ = writeln!(
                    s,
                    ": {err} (the server answers this client by static policy)"
                );
            }
            (None, "boot") => {
                let mut parts = Vec::new();
                for (k, v) in [
                    ("loader", &h.loader),
                    ("script-url", &h.script_url),
                    ("entry", &h.entry),
                ] {
                    if let Some(v) = v {
                        parts.push(format!("{k} {v:?}"));
                    }
                }
                for (k, v) in &h.variables {
                    parts.push(format!("set {k} {v}"));
                }
                let _ = writeln!(s, ": {}", parts.join(", "));
            }
            _ => {
                let _ = writeln!(s);
            }
        }
        let _ = writeln!(
            s,
            "  (asked now; the server asks in the background and answers from its cache for \
             boot.hook-cache-ttl-s)"
        );
    }
    match &e.reply {
        None => {
            let _ = writeln!(
                s,
                "NO REPLY: {} (decided by {})",
                d.refusal.as_deref().unwrap_or("unknown"),
                d.by
            );
        }
        Some(r) => {
            let _ = writeln!(
                s,
                "reply {} to {} from port {} (broadcast flag {})",
                r.message, r.to, r.from_port, r.broadcast
            );
            let _ = writeln!(s, "  kind          {}", d.kind.unwrap_or("-"));
            let _ = writeln!(
                s,
                "  boot file     {:?} (from {})",
                r.bootfile_name.as_deref().unwrap_or(&r.file),
                d.boot_file_from.as_deref().unwrap_or("-")
            );
            let _ = writeln!(s, "  file field    {:?}", r.file);
            if let Some(b) = &r.bootfile_name {
                let _ = writeln!(s, "  option 67     {b:?}");
            }
            let _ = writeln!(
                s,
                "  next-server   {} (from {})",
                r.next_server,
                d.next_server_from.as_deref().unwrap_or("-")
            );
            if let Some(id) = r.server_id {
                let _ = writeln!(s, "  option 54     {id}");
            }
            if let Some(v) = &r.vendor_class {
                let _ = writeln!(s, "  option 60     {v:?}");
            }
            if let Some(v) = &r.vendor_specific {
                let pxe = r.pxe.as_ref();
                let _ = writeln!(
                    s,
                    "  option 43     {v} (discovery control {}, boot item {})",
                    pxe.and_then(|p| p.discovery_control)
                        .map_or("-".into(), |c| format!("{c:#04x}")),
                    pxe.and_then(|p| p.boot_item.clone())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    if let Some(i) = &e.ipxe {
        let _ = writeln!(s, "iPXE script {}", i.url);
        if let Some(note) = &i.note {
            let _ = writeln!(s, "  {note}");
        }
        match (&i.entry, &i.menu_rule) {
            (Some(entry), Some(rule)) => {
                let _ = writeln!(
                    s,
                    "  boots entry {entry:?} directly (menu.rules[{}]{})",
                    rule.index,
                    rule.at
                        .as_deref()
                        .map(|a| format!(" at {a}"))
                        .unwrap_or_default()
                );
            }
            _ if i.script.is_some() => {
                let _ = writeln!(s, "  shows the menu");
            }
            _ => {}
        }
        if let Some(script) = &i.script {
            for line in script.lines() {
                let _ = writeln!(s, "  | {line}");
            }
        }
    }
    s
}

/// The configuration in force and the responder's settings, as the DHCP service has them now
/// (after any reload).
pub type CurrentSettings = dyn Fn() -> (Arc<Config>, ProxyDhcpConfig) + Send + Sync;

/// A running server's HTTP service answering one request head (`GET /boot.ipxe?.. HTTP/1.1`
/// with its Host) from a client address: the script it serves, if any.
pub type ServedScript = dyn Fn(&[u8], Option<Ipv4Addr>) -> Option<String> + Send + Sync;

/// What `/api/v1/explain` answers from: the running server's settings, its machine registry
/// and its script handler.
struct Published {
    current: Box<CurrentSettings>,
    registry: Option<Arc<crate::db::Registry>>,
    script: Box<ServedScript>,
}

static PUBLISHED: RwLock<Option<Arc<Published>>> = RwLock::new(None);

/// Makes a running server the one `/api/v1/explain` explains (one server a process): `current`
/// gives its settings at the time of each request.
pub fn publish(
    current: Box<CurrentSettings>,
    registry: Option<Arc<crate::db::Registry>>,
    script: Box<ServedScript>,
) {
    let p = Arc::new(Published {
        current,
        registry,
        script,
    });
    match PUBLISHED.write() {
        Ok(mut slot) => *slot = Some(p),
        Err(poisoned) => *poisoned.into_inner() = Some(p),
    }
}

fn published() -> Option<Arc<Published>> {
    match PUBLISHED.read() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// `/api/v1/explain?mac=..&arch=..[&uuid&relay&user-class&vendor-class&client-ip&pxe&server]`.
pub fn web_reply(query: &str) -> crate::web::WebReply {
    let reply = |status, body: String| crate::web::WebReply {
        status,
        content_type: "text/plain",
        body: body.into_bytes(),
    };
    let Some(p) = published() else {
        return reply(503, "no configuration is being served\n".into());
    };
    let args = match client_from_query(query) {
        Ok(a) => a,
        Err(e) => return reply(400, format!("{e}\n")),
    };
    let (config, proxy) = (p.current)();
    // The web loop never waits on the handler: no hook lookup here.
    let explanation = explain_with(
        &config,
        proxy,
        p.registry.clone(),
        Some(&*p.script),
        &args,
        false,
    );
    match serde_json::to_vec_pretty(&explanation) {
        Ok(body) => crate::web::WebReply {
            status: 200,
            content_type: "application/json",
            body,
        },
        Err(e) => reply(500, format!("encoding failed: {e}\n")),
    }
}

/// The query's values, by the names of the command's flags.
pub fn client_from_query(query: &str) -> Result<ClientArgs, String> {
    let mut c = ClientArgs {
        mac: MacAddr::default(),
        arch: None,
        uuid: None,
        relay: None,
        user_class: None,
        vendor_class: None,
        client_ip: None,
        pxe: false,
        server: None,
    };
    let mut mac = None;
    for pair in query.split('&').filter(|p| !p.is_empty()).take(16) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = (raw.len() <= 256)
            .then(|| zpxe_engine::path::decode_query_component(raw))
            .flatten()
            .ok_or_else(|| format!("bad value for {key}"))?;
        let bad = |what: &str| format!("bad {key} ({what})");
        match key {
            "mac" => mac = Some(value.parse().map_err(|_| bad("aa:bb:cc:dd:ee:ff"))?),
            "arch" => c.arch = Some(parse_arch(&value)?),
            "uuid" => c.uuid = Some(value.parse().map_err(|_| bad("a UUID"))?),
            "relay" => c.relay = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
            "client-ip" => c.client_ip = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
            "server" => c.server = Some(value.parse().map_err(|_| bad("an IPv4 address"))?),
            "user-class" => c.user_class = Some(printable(&value).ok_or_else(|| bad("text"))?),
            "vendor-class" => c.vendor_class = Some(printable(&value).ok_or_else(|| bad("text"))?),
            "pxe" => c.pxe = matches!(value.as_str(), "" | "1" | "true"),
            _ => return Err(format!("unknown parameter {key:?}")),
        }
    }
    c.mac = mac.ok_or("mac is required")?;
    Ok(c)
}

fn printable(s: &str) -> Option<String> {
    (s.len() <= 128 && s.bytes().all(|b| (0x20..0x7f).contains(&b))).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(std::path::Path::new("t.toml"), text).expect("config")
    }

    fn args(query: &str) -> ClientArgs {
        client_from_query(query).expect("query")
    }

    const BASE: &str = "[server]\nroot = \"/tmp\"\nlisten = [\"10.0.0.1\"]\n";

    #[test]
    fn defaults_by_architecture() {
        let c = config(BASE);
        for (arch, file, kind) in [
            ("0", "undionly.kpxe", "loader"),
            ("7", "ipxe.efi", "loader"),
            ("9", "ipxe.efi", "loader"),
            ("11", "ipxe-arm64.efi", "loader"),
            ("16", "http://10.0.0.1:8050/ipxe.efi", "http-boot"),
        ] {
            let e = explain(&c, &args(&format!("mac=52:54:00:00:00:01&arch={arch}")));
            let r = e.reply.as_ref().expect("reply");
            assert_eq!(
                r.bootfile_name.as_deref().unwrap_or(&r.file),
                file,
                "{arch}"
            );
            assert_eq!(e.decision.kind, Some(kind));
            assert_eq!(r.next_server, Ipv4Addr::new(10, 0, 0, 1));
            assert_eq!(e.decision.by, "boot");
            assert_eq!(r.message, "OFFER");
        }
        let e = explain(&c, &args("mac=52:54:00:00:00:01&arch=10"));
        assert!(e.reply.is_none());
        assert_eq!(
            e.decision.refusal.as_deref(),
            Some("no boot file configured for client architecture 10")
        );
    }

    #[test]
    fn rules_and_ignore_lists_are_named() {
        let text = format!(
            "{BASE}[boot]\nignore-macs = [\"52:54:00:00:00:99\"]\n\
             [[boot.rule]]\nmac = \"52:54:00:00:00:02\"\nloader = \"special.efi\"\n\
             [[boot.rule]]\nsubnet = \"10.20.0.0/16\"\nnext-server = \"10.0.0.9\"\n\
             [[boot.rule]]\narch = 0\nignore = true\n"
        );
        let c = config(&text);
        // Positions come from where the configuration was read.
        let e = explain(&c, &args("mac=52:54:00:00:00:02&arch=7"));
        assert_eq!(e.reply.as_ref().expect("reply").file, "special.efi");
        assert_eq!(e.decision.by, "boot.rule[0]");
        assert_eq!(
            e.decision.rule.as_ref().and_then(|r| r.at.as_deref()),
            Some("t.toml:6:1")
        );
        assert_eq!(
            e.decision.boot_file_from.as_deref(),
            Some("boot.rule[0].loader")
        );

        let e = explain(&c, &args("mac=52:54:00:00:00:03&arch=7&relay=10.20.1.1"));
        let r = e.reply.as_ref().expect("reply");
        assert_eq!(r.next_server, Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(r.to, "10.20.1.1:67".parse().expect("addr"));
        assert_eq!(e.decision.by, "boot.rule[1]");
        assert_eq!(
            e.decision.next_server_from.as_deref(),
            Some("boot.rule[1].next-server")
        );

        let e = explain(&c, &args("mac=52:54:00:00:00:03&arch=0"));
        assert!(e.reply.is_none());
        assert_eq!(e.decision.by, "boot.rule[2]");
        assert_eq!(
            e.decision.refusal.as_deref(),
            Some("a boot rule says ignore")
        );

        let e = explain(&c, &args("mac=52:54:00:00:00:99&arch=0"));
        assert_eq!(e.decision.by, "boot.ignore-macs");
    }

    #[test]
    fn ipxe_gets_the_script_with_its_menu_rule() {
        let text = format!(
            "{BASE}[menu]\n[[menu.entries]]\nid = \"local\"\nlabel = \"Local\"\n\
             kind = {{ type = \"exit\" }}\n[[menu.rules]]\nmac = \"52:54:00:00:00:05\"\n\
             entry = \"local\"\n"
        );
        let c = config(&text);
        let e = explain(&c, &args("mac=52:54:00:00:00:05&arch=7&user-class=iPXE"));
        assert_eq!(e.decision.kind, Some("ipxe-script"));
        let i = e.ipxe.expect("ipxe");
        assert_eq!(
            i.url,
            "http://10.0.0.1:8050/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A05&uuid=&arch=7"
        );
        assert_eq!(i.entry.as_deref(), Some("local"));
        assert_eq!(i.menu_rule.map(|r| r.index), Some(0));
        let script = i.script.expect("script");
        assert!(script.contains("exit\n"), "{script}");
        assert!(script.contains("http://10.0.0.1:8051/report"), "{script}");
    }

    #[test]
    fn pxe_request_and_http_client_options() {
        let c = config(BASE);
        let e = explain(
            &c,
            &args("mac=52:54:00:00:00:01&arch=7&pxe=1&client-ip=10.0.0.50"),
        );
        let r = e.reply.expect("reply");
        assert_eq!(r.message, "ACK");
        assert_eq!(r.to, "10.0.0.50:4011".parse().expect("addr"));
        assert_eq!(r.vendor_class.as_deref(), Some("PXEClient"));
        assert_eq!(r.pxe.and_then(|p| p.discovery_control), Some(8));

        let e = explain(&c, &args("mac=52:54:00:00:00:01&arch=19"));
        let r = e.reply.expect("reply");
        assert_eq!(r.vendor_class.as_deref(), Some("HTTPClient"));
        assert_eq!(r.vendor_specific, None);
        assert_eq!(
            r.bootfile_name.as_deref(),
            Some("http://10.0.0.1:8050/ipxe-arm64.efi")
        );
        let e = explain(
            &c,
            &args("mac=52:54:00:00:00:01&arch=7&vendor-class=MSFT%205.0"),
        );
        assert_eq!(e.decision.refusal.as_deref(), Some("not a PXE client"));
    }

    #[test]
    fn queries_are_checked() {
        assert!(client_from_query("arch=7").is_err());
        assert!(client_from_query("mac=zz&arch=7").is_err());
        assert!(client_from_query("mac=52:54:00:00:00:01&arch=x").is_err());
        assert!(client_from_query("mac=52:54:00:00:00:01&bogus=1").is_err());
        assert!(client_from_query("mac=52:54:00:00:00:01&user-class=%0a").is_err());
        let a = args("mac=52-54-00-00-00-01&arch=efi64&relay=10.1.2.3&server=10.0.0.2");
        assert_eq!(
            (a.arch, a.relay),
            (Some(7), Some(Ipv4Addr::new(10, 1, 2, 3)))
        );
    }
}
