//! The machine registry's API (issue 16): `/api/v1/machines`.
//!
//! - `GET /api/v1/machines?offset=&limit=&group=`: a page of records, in registration order;
//! - `GET /api/v1/machines/{mac|uuid}`: one record;
//! - `PUT /api/v1/machines/{mac|uuid}` (JSON object): creates or replaces the record;
//! - `POST /api/v1/machines` (JSON array of objects, each with `mac` or `uuid`): stores every
//!   record in one transaction, or none when any is invalid (the 400 lists each bad index);
//! - `DELETE /api/v1/machines/{mac|uuid}`.
//!
//! Changes need the bearer token ([`super::access`]), commit to the database and publish a new
//! registry snapshot before the answer, so the machine's next DHCP request and script fetch
//! see them. The engine's HTTP machine serves only `GET` and `HEAD` without bodies (the boot
//! ports never take one), so the web port hands requests with other methods to
//! [`serve_write`]: one request per connection, head and body bounded, then close.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::{Either, select};
use serde::{Deserialize, Serialize};
use zpxe_engine::dhcp::{ClientUuid, MacAddr};
use zpxe_platform::runtime::sleep;
use zpxe_platform::tcp::TcpConn;

use super::{WebReply, WebService, bad_request, internal, number, parse_query};
use crate::db::{BootOnceState, MachineKey, MachineRecord};

/// Records in one `GET` page by default, and at most.
const PAGE: usize = 100;
const MAX_PAGE_RECORDS: usize = 1000;
/// Longest request head of a state-changing request.
const MAX_HEAD: usize = 8 * 1024;
/// Longest body of a `PUT` (one record) and of a `POST` (a whole import).
const MAX_PUT_BODY: usize = 64 * 1024;
const MAX_POST_BODY: usize = 4 * 1024 * 1024;
/// Records in one import at most.
pub const MAX_IMPORT: usize = 10_000;
/// Time a client has to send its whole request, and to take the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A record as an API client sends it. The MAC (or UUID) is the path's on `PUT`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct MachineBody {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub name: String,
    pub group: String,
    /// A menu entry id booted directly.
    pub entry: Option<String>,
    /// A loader replacing the policy's, for firmware that is not yet running iPXE.
    pub loader: Option<String>,
    pub variables: BTreeMap<String, String>,
    pub boot_once: bool,
    /// `pending` re-arms a deployed boot-once machine; absent keeps the stored state.
    pub state: Option<BootOnceState>,
}

#[derive(Serialize)]
struct MachinePage {
    total: usize,
    offset: usize,
    machines: Vec<MachineRecord>,
}

#[derive(Serialize)]
struct LineError {
    index: usize,
    error: String,
}

/// Loader names: a path below the TFTP root, in characters a `file` field carries plainly.
fn plain_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::db::RECORD_TEXT_LEN
        && !s.split('/').any(|c| c == ".." || c == ".")
        && !s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// Variable values go into `set` lines of iPXE scripts: nothing iPXE reads as syntax
/// (settings expansion `${`, operators `||` `&&`, quotes, comments, line ends).
fn plain_value(s: &str) -> bool {
    s.len() <= crate::db::RECORD_VALUE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" ._-:/=,+@%~[]()!*?^".contains(&b))
}

impl MachineBody {
    /// The record this body describes, every field checked. `key` is the path's.
    pub fn into_record(
        self,
        key: Option<MachineKey>,
        entries: Option<&BTreeSet<String>>,
    ) -> Result<MachineRecord, String> {
        let mut rec = MachineRecord {
            name: self.name,
            group: self.group,
            entry: self.entry.filter(|e| !e.is_empty()),
            loader: self.loader.filter(|l| !l.is_empty()),
            variables: self.variables,
            boot_once: self.boot_once,
            state: self.state.unwrap_or_default(),
            ..MachineRecord::default()
        };
        if let Some(m) = &self.mac {
            rec.mac = Some(
                m.parse::<MacAddr>()
                    .map_err(|_| format!("mac {m:?}: give six hex pairs, aa:bb:cc:dd:ee:ff"))?,
            );
        }
        if let Some(u) = self.uuid.as_deref().filter(|u| !u.is_empty()) {
            rec.uuid = Some(
                u.parse::<ClientUuid>()
                    .map_err(|_| format!("uuid {u:?}: give 8-4-4-4-12 hex digits"))?,
            );
        }
        match key {
            Some(MachineKey::Mac(m)) => {
                if rec.mac.is_some_and(|b| b != m) {
                    return Err("the body's mac differs from the path's".into());
                }
                rec.mac = Some(m);
            }
            Some(MachineKey::Uuid(u)) => {
                if rec.uuid.is_some_and(|b| b != u) {
                    return Err("the body's uuid differs from the path's".into());
                }
                rec.uuid = Some(u);
            }
            None => {}
        }
        if let Some(e) = &rec.entry {
            let id_ok = e.len() <= 64
                && !e.starts_with('-')
                && e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !id_ok {
                return Err(format!(
                    "entry {e:?}: a menu entry id (letters, digits, . _ -)"
                ));
            }
            if let Some(known) = entries
                && !known.contains(e)
            {
                return Err(format!(
                    "entry {e:?} is not an id of [[menu.entries]] (known: {})",
                    known.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(l) = &rec.loader
            && !plain_path(l)
        {
            return Err(format!(
                "loader {l:?}: a relative path of letters, digits, . _ - / (at most {} bytes)",
                crate::db::RECORD_TEXT_LEN
            ));
        }
        for (k, v) in &rec.variables {
            if !plain_value(v) {
                return Err(format!(
                    "variable {k}: at most {} bytes of letters, digits, spaces and \
                     ._-:/=,+@%~[]()!*?^ (no $, quotes, | & ; #)",
                    crate::db::RECORD_VALUE_LEN
                ));
            }
        }
        rec.validate()?;
        Ok(rec)
    }
}

fn key_of(s: &str) -> Result<MachineKey, WebReply> {
    let s = zpxe_engine::path::decode_query_component(s)
        .ok_or_else(|| bad_request("bad percent-encoding in the path".into()))?;
    s.parse::<MachineKey>().map_err(bad_request)
}

fn json_error(e: &serde_json::Error) -> WebReply {
    bad_request(format!("the body is not a machine record: {e}"))
}

impl WebService {
    /// `GET /api/v1/machines[/{key}]`, from the registry's in-memory snapshot (the one the
    /// data path reads): a read never touches the database, so it costs the web loop no I/O.
    /// Every change commits, then publishes a new snapshot before its answer; servers sharing
    /// a PostgreSQL see each other's changes when the writer's generation poll publishes them.
    pub(super) fn machines_read(&self, path: &str, query: &str) -> WebReply {
        self.api(|db| {
            let snapshot = db.registry().snapshot();
            let rest = path.strip_prefix("/api/v1/machines").unwrap_or_default();
            match rest.strip_prefix('/') {
                None | Some("") => {
                    let params = parse_query(query).map_err(bad_request)?;
                    let offset = number(&params, "offset")?.unwrap_or(0);
                    let limit = number(&params, "limit")?
                        .unwrap_or(PAGE)
                        .clamp(1, MAX_PAGE_RECORDS);
                    let group = params.get("group").filter(|g| !g.is_empty());
                    let all = || {
                        snapshot
                            .records()
                            .filter(|r| group.is_none_or(|g| r.group == *g))
                    };
                    Ok(WebReply::json(&MachinePage {
                        total: all().count(),
                        offset,
                        machines: all().skip(offset).take(limit).cloned().collect(),
                    }))
                }
                Some(key) => match snapshot.by_key(key_of(key)?) {
                    Some(r) => Ok(WebReply::json(r)),
                    None => Err(WebReply::new(404, "text/plain", "no such machine\n")),
                },
            }
        })
    }

    /// Whether a state-changing request is refused before its body is read: a peer outside
    /// `web.allow`, a path that takes no writes, or no valid bearer token. Checked on the head
    /// alone, so an unauthenticated peer never makes the server buffer a body.
    pub(crate) fn refuse_write(
        &self,
        path: &str,
        authorization: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Option<(WebReply, Option<&'static str>)> {
        let access = self.access();
        if !access.allows(peer) {
            return Some((access.forbidden_peer(peer), None));
        }
        let machines = path == "/api/v1/machines" || path.starts_with("/api/v1/machines/");
        if !machines && path != "/api/clients" {
            return Some((WebReply::new(404, "text/plain", "not found\n"), None));
        }
        access.authorize(authorization).err().map(|d| d.reply())
    }

    /// A state-changing request (`PUT`, `POST`, `DELETE`): the reply and, for a 401, the
    /// `WWW-Authenticate` header line.
    pub fn write(
        &self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
        peer: Option<IpAddr>,
    ) -> (WebReply, Option<&'static str>) {
        if let Some(refused) = self.refuse_write(path, authorization, peer) {
            return refused;
        }
        let machines = path == "/api/v1/machines" || path.starts_with("/api/v1/machines/");
        if !machines {
            return (self.clear_inventory(method, peer), None);
        }
        (self.machines_write(method, path, body, peer), None)
    }

    /// `DELETE /api/clients`: forgets the in-memory inventory of reports (the database's
    /// timelines stay; retention ages them out).
    fn clear_inventory(&self, method: &str, peer: Option<IpAddr>) -> WebReply {
        if method != "DELETE" {
            return WebReply::new(405, "text/plain", "use DELETE on /api/clients\n");
        }
        let cleared = {
            let mut c = self.inventory.lock();
            let n = c.by_mac.len();
            c.by_mac.clear();
            c.by_recency.clear();
            c.stages.clear();
            n
        };
        tracing::info!(cleared, peer = ?peer, "inventory cleared");
        WebReply::json(&serde_json::json!({ "cleared": cleared }))
    }

    fn machines_write(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        peer: Option<IpAddr>,
    ) -> WebReply {
        let entries = self.menu_entries.as_deref();
        let key = path
            .strip_prefix("/api/v1/machines/")
            .filter(|k| !k.is_empty());
        self.api(|db| match (method, key) {
            ("PUT", Some(k)) => {
                let key = key_of(k)?;
                let b: MachineBody = serde_json::from_slice(body).map_err(|e| json_error(&e))?;
                if let Some(reply) = rearm_file_record(db, key, &b)? {
                    tracing::info!(machine = %k, peer = ?peer, "configuration machine re-armed");
                    return Ok(reply);
                }
                let keep_state = b.state.is_none();
                let mut rec = b.into_record(Some(key), entries).map_err(bad_request)?;
                refuse_file_record(&db.registry().snapshot(), rec.mac, rec.uuid)?;
                let old = db.machine(key).map_err(internal)?;
                if keep_state && let Some(old) = &old {
                    rec.state = old.state;
                }
                db.put_machine(&rec).map_err(|e| conflict_or_internal(&e))?;
                tracing::info!(machine = %k, peer = ?peer, "machine record stored");
                let stored = db.machine(key).map_err(internal)?.unwrap_or(rec);
                let mut r = WebReply::json(&stored);
                r.status = if old.is_some() { 200 } else { 201 };
                Ok(r)
            }
            ("POST", None) => {
                let list: Vec<MachineBody> =
                    serde_json::from_slice(body).map_err(|e| json_error(&e))?;
                if list.len() > MAX_IMPORT {
                    return Err(bad_request(format!("at most {MAX_IMPORT} records at once")));
                }
                let mut recs = Vec::with_capacity(list.len());
                let mut errors = Vec::new();
                let mut seen = BTreeSet::new();
                for (index, b) in list.into_iter().enumerate() {
                    match b.into_record(None, entries) {
                        Ok(r) => {
                            let id = r
                                .mac
                                .map_or_else(|| format!("{:?}", r.uuid), |m| m.to_string());
                            if seen.insert(id) {
                                recs.push(r);
                            } else {
                                errors.push(LineError {
                                    index,
                                    error: "this machine is listed twice".into(),
                                });
                            }
                        }
                        Err(error) => errors.push(LineError { index, error }),
                    }
                }
                if !errors.is_empty() {
                    let mut r = WebReply::json(&serde_json::json!({
                        "error": "nothing was imported",
                        "errors": errors,
                    }));
                    r.status = 400;
                    return Err(r);
                }
                let snapshot = db.registry().snapshot();
                let held: Vec<LineError> = recs
                    .iter()
                    .enumerate()
                    .filter_map(|(index, r)| {
                        let f = snapshot.file_record(r.mac, r.uuid)?;
                        Some(LineError {
                            index,
                            error: held_by_file(f),
                        })
                    })
                    .collect();
                if !held.is_empty() {
                    let mut r = WebReply::json(&serde_json::json!({
                        "error": "nothing was imported",
                        "errors": held,
                    }));
                    r.status = 409;
                    return Err(r);
                }
                db.put_machines(&recs)
                    .map_err(|e| conflict_or_internal(&e))?;
                tracing::info!(records = recs.len(), peer = ?peer, "machine records imported");
                Ok(WebReply::json(
                    &serde_json::json!({ "imported": recs.len() }),
                ))
            }
            ("DELETE", Some(k)) => {
                let key = key_of(k)?;
                let (mac, uuid) = match key {
                    MachineKey::Mac(m) => (Some(m), None),
                    MachineKey::Uuid(u) => (None, Some(u)),
                };
                refuse_file_record(&db.registry().snapshot(), mac, uuid)?;
                if db.delete_machine(key).map_err(internal)? {
                    tracing::info!(machine = %k, peer = ?peer, "machine record deleted");
                    Ok(WebReply::json(&serde_json::json!({ "deleted": k })))
                } else {
                    Err(WebReply::new(404, "text/plain", "no such machine\n"))
                }
            }
            _ => Err(WebReply::new(
                405,
                "text/plain",
                "use PUT or DELETE on /api/v1/machines/{mac}, POST on /api/v1/machines\n",
            )),
        })
    }
}

/// `PUT {"state": "pending"}` on a configuration record that is boot-once: the one change the
/// API makes to such a record, re-arming it (its deployed state is the database's). `None`
/// for anything else.
fn rearm_file_record(
    db: &crate::db::Database,
    key: MachineKey,
    b: &MachineBody,
) -> Result<Option<WebReply>, WebReply> {
    let only_state = b.state == Some(BootOnceState::Pending)
        && b.mac.is_none()
        && b.uuid.is_none()
        && b.name.is_empty()
        && b.group.is_empty()
        && b.entry.is_none()
        && b.loader.is_none()
        && b.variables.is_empty()
        && !b.boot_once;
    if !only_state {
        return Ok(None);
    }
    let snapshot = db.registry().snapshot();
    let Some(f) = snapshot.by_key(key).filter(|r| r.source.is_some()) else {
        return Ok(None);
    };
    if !f.boot_once {
        return Ok(None);
    }
    let file_key = crate::db::file_key(f.mac, f.uuid).unwrap_or_default();
    db.rearm_file_machine(&file_key).map_err(internal)?;
    let rearmed = db.registry().snapshot();
    match rearmed.by_key(key) {
        Some(r) => Ok(Some(WebReply::json(r))),
        None => Err(WebReply::new(404, "text/plain", "no such machine\n")),
    }
}

/// Why a configuration record cannot be changed through the API.
fn held_by_file(f: &MachineRecord) -> String {
    format!(
        "this machine is defined in the configuration at {}: change or remove it there, then \
         reload (a deployed boot-once one is re-armed with PUT {{\"state\": \"pending\"}})",
        f.source.as_deref().unwrap_or("[[machine]]")
    )
}

/// 409 when a configuration record (`[[machine]]`) names this MAC or UUID: the file is where
/// it changes, and a database record beside it would be shadowed.
fn refuse_file_record(
    snapshot: &crate::db::RegistrySnapshot,
    mac: Option<MacAddr>,
    uuid: Option<ClientUuid>,
) -> Result<(), WebReply> {
    match snapshot.file_record(mac, uuid) {
        Some(f) => Err(WebReply::new(
            409,
            "text/plain",
            format!("{}\n", held_by_file(f)),
        )),
        None => Ok(()),
    }
}

/// A record whose MAC and UUID name two stored records is the client's mistake.
fn conflict_or_internal(e: &anyhow::Error) -> WebReply {
    let text = format!("{e:#}");
    if text.contains("two different records") {
        WebReply::new(409, "text/plain", format!("{text}\n"))
    } else {
        internal(anyhow::anyhow!(text))
    }
}

/// A state-changing request's head: method, path and the headers that matter.
#[derive(Debug, PartialEq, Eq)]
pub struct WriteHead {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_length: usize,
    /// Bytes of the head, with its blank line.
    pub head_len: usize,
}

/// Whether the first bytes of a connection start a request the engine's machine does not
/// serve (a method other than `GET` and `HEAD`): those go to [`serve_write`].
pub fn is_write_request(first: &[u8]) -> bool {
    WRITE_METHODS.iter().any(|m| first.starts_with(m))
}

const WRITE_METHODS: [&[u8]; 4] = [b"PUT ", b"POST ", b"DELETE ", b"PATCH "];

/// Whether `first` is a strict beginning of a method [`is_write_request`] takes (`PU`,
/// `DELE`): read more before deciding.
pub fn may_be_write_method(first: &[u8]) -> bool {
    WRITE_METHODS
        .iter()
        .any(|m| m.len() > first.len() && m.starts_with(first))
}

/// Parses a complete head (`Ok(None)`: not complete yet). Errors are the 4xx to answer.
pub fn parse_write_head(buf: &[u8]) -> Result<Option<WriteHead>, (u16, &'static str)> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err((431, "request head too large"))
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err((431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| (400, "request head is not text"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err((505, "HTTP version not supported"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err((400, "malformed request target"));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut authorization = None;
    let mut content_length = None;
    for l in lines {
        let (name, value) = l.split_once(':').ok_or((400, "malformed header line"))?;
        if name.is_empty() || name.bytes().any(|b| b == b' ' || b == b'\t') {
            return Err((400, "malformed header name"));
        }
        if value.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err((400, "control character in a header"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("authorization") {
            if authorization.replace(value.to_owned()).is_some() {
                return Err((400, "more than one Authorization"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            //= https://www.rfc-editor.org/rfc/rfc9110#section-8.6
            //# Content-Length = 1*DIGIT
            if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err((400, "invalid Content-Length"));
            }
            if content_length
                .replace(value.parse::<usize>().unwrap_or(usize::MAX))
                .is_some()
            {
                return Err((400, "more than one Content-Length"));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err((411, "send the body with a Content-Length"));
        }
    }
    let content_length = content_length.unwrap_or(0);
    let max = if method == "POST" {
        MAX_POST_BODY
    } else {
        MAX_PUT_BODY
    };
    if content_length > max {
        return Err((413, "request body too large"));
    }
    Ok(Some(WriteHead {
        method: method.to_owned(),
        path: path.to_owned(),
        authorization,
        content_length,
        head_len: end + 4,
    }))
}

/// Serves one state-changing request on `tcp`, whose first bytes are `buf`, then closes.
pub async fn serve_write(web: &WebService, tcp: &mut TcpConn, peer: SocketAddr, buf: Vec<u8>) {
    let answer = {
        let work = std::pin::pin!(read_and_answer(web, &mut *tcp, peer, buf));
        let deadline = std::pin::pin!(sleep(REQUEST_TIMEOUT));
        match select(work, deadline).await {
            Either::Left((r, _)) => r,
            // Too slow: close without an answer, as the boot ports do.
            Either::Right(_) => None,
        }
    };
    let Some((path, reply, extra)) = answer else {
        return;
    };
    web.count_request(&path, reply.status);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    )
    .into_bytes();
    if let Some(h) = extra {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&reply.body);
    {
        let send = std::pin::pin!(tcp.write_all(out));
        let _ = select(send, std::pin::pin!(sleep(REQUEST_TIMEOUT))).await;
    }
    let _ = tcp.shutdown().await;
}

async fn read_and_answer(
    web: &WebService,
    tcp: &mut TcpConn,
    peer: SocketAddr,
    mut buf: Vec<u8>,
) -> Option<(String, WebReply, Option<&'static str>)> {
    let head = loop {
        match parse_write_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err((status, why)) => {
                return Some((
                    String::new(),
                    WebReply::new(status, "text/plain", format!("{why}\n")),
                    None,
                ));
            }
        }
        if !read_more(tcp, &mut buf, MAX_HEAD + 4).await {
            return None;
        }
    };
    if let Some((reply, extra)) =
        web.refuse_write(&head.path, head.authorization.as_deref(), Some(peer.ip()))
    {
        return Some((head.path, reply, extra));
    }
    let want = head.head_len + head.content_length;
    buf.reserve_exact(want.saturating_sub(buf.len()));
    while buf.len() < want {
        if !read_more(tcp, &mut buf, want).await {
            return None;
        }
    }
    let body = buf.get(head.head_len..want).unwrap_or_default();
    let (reply, extra) = web.write(
        &head.method,
        &head.path,
        head.authorization.as_deref(),
        body,
        Some(peer.ip()),
    );
    Some((head.path, reply, extra))
}

/// Reads more of the request into `buf` (at most up to `limit` bytes); false at EOF or error.
async fn read_more(tcp: &mut TcpConn, buf: &mut Vec<u8>, limit: usize) -> bool {
    let room = limit.saturating_sub(buf.len()).clamp(1, 64 * 1024);
    let (res, chunk) = tcp.read(Vec::with_capacity(room)).await;
    match res {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            true
        }
        _ => false,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_and_bounded() {
        let h = parse_write_head(
            b"PUT /api/v1/machines/aa:bb:cc:dd:ee:ff?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 12\r\n\r\n{}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/api/v1/machines/aa:bb:cc:dd:ee:ff");
        assert_eq!(h.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(h.content_length, 12);
        assert_eq!(parse_write_head(b"PUT / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        for (raw, status) in [
            (
                &b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"[..],
                400,
            ),
            (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"PUT / HTTP/2\r\n\r\n", 505),
            (b"PUT  / HTTP/1.1\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nX\r\n\r\n", 400),
            (b"PUT / HTTP/1.1\r\nA: b\x01\r\n\r\n", 400),
        ] {
            assert_eq!(
                parse_write_head(raw).map(|_| ()).unwrap_err().0,
                status,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let big = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(parse_write_head(&big).unwrap_err().0, 431);
        assert!(is_write_request(b"DELETE /x"));
        assert!(!is_write_request(b"GET /x"));
        for partial in [&b"P"[..], b"PU", b"PUT", b"DELE", b"POST"] {
            assert!(may_be_write_method(partial), "{partial:?}");
        }
        for whole in [&b"PUT "[..], b"G", b"GET /", b"DELETE /x", b"X"] {
            assert!(!may_be_write_method(whole), "{whole:?}");
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let entries: BTreeSet<String> = ["win".to_owned()].into();
        let body = |j: &str| serde_json::from_str::<MachineBody>(j).unwrap();
        let ok = body(r#"{"name":"pc1","loader":"custom/loader.efi","entry":"win","variables":{"os":"w11"},"boot-once":true}"#)
            .into_record(Some(MachineKey::Mac(mac)), Some(&entries))
            .unwrap();
        assert_eq!(ok.mac, Some(mac));
        assert_eq!(ok.loader.as_deref(), Some("custom/loader.efi"));
        assert!(ok.boot_once);
        for (j, why) in [
            (r#"{"loader":"../etc/passwd"}"#, "loader"),
            (r#"{"loader":"/abs"}"#, "loader"),
            (r#"{"loader":"a b"}"#, "loader"),
            (r#"{"entry":"nope"}"#, "not an id"),
            (r#"{"entry":"a b"}"#, "entry"),
            (r#"{"name":"a\u0007b"}"#, "name"),
            (r#"{"variables":{"x":"${net0/ip}"}}"#, "variable x"),
            (r#"{"variables":{"x":"a || shell"}}"#, "variable x"),
            (r#"{"variables":{"bad name":"1"}}"#, "variable name"),
            (r#"{"mac":"52:54:00:00:00:02"}"#, "differs"),
            (r#"{"uuid":"nope"}"#, "uuid"),
        ] {
            let e = body(j)
                .into_record(Some(MachineKey::Mac(mac)), Some(&entries))
                .unwrap_err();
            assert!(e.contains(why), "{j}: {e}");
        }
        let long = format!(r#"{{"name":"{}"}}"#, "x".repeat(129));
        assert!(
            body(&long)
                .into_record(Some(MachineKey::Mac(mac)), None)
                .is_err()
        );
        assert!(
            body("{}").into_record(None, None).is_err(),
            "no mac, no uuid"
        );
        assert!(serde_json::from_str::<MachineBody>(r#"{"colour":"red"}"#).is_err());
    }
}
