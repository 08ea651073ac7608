//! [`HttpClient`] against [`HttpConnection`] in memory: image bytes materialized from a
//! [`MemoryCatalog`], TCP delivered in seeded random pieces, every byte checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::client::{ClientEvent, HttpClient};
use super::conn::{HttpConfig, HttpConnection, Output};
use super::handler::Handler;
use super::ipxe::{BootMenu, BootScripts, EntryKind, MenuEntry};
use super::response::StatusCode;
use crate::http::StaticFiles;
use crate::image::{ByteRange, MemoryCatalog};

#[derive(Debug, Default)]
struct Answer {
    status: Option<StatusCode>,
    content_type: Option<String>,
    first_offset: Option<u64>,
    body: Vec<u8>,
    finished: bool,
}

struct Pair<H: Handler> {
    client: HttpClient,
    server: HttpConnection,
    handler: H,
    cat: MemoryCatalog,
    rng: SmallRng,
    now: Instant,
    wall: SystemTime,
    answers: HashMap<u64, Answer>,
    closed_unanswered: Option<Vec<u64>>,
}

impl<H: Handler> Pair<H> {
    fn new(handler: H, cat: MemoryCatalog, config: HttpConfig, pipeline: usize, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            client: HttpClient::new(pipeline),
            server: HttpConnection::new(now, Arc::new(config)),
            handler,
            cat,
            rng: SmallRng::seed_from_u64(seed),
            now,
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            answers: HashMap::new(),
            closed_unanswered: None,
        }
    }

    /// Runs both machines until neither has anything left to do.
    fn drive(&mut self) {
        let mut c2s = Vec::new();
        let mut s2c = Vec::new();
        let mut server_closed = false;
        let mut buf = vec![0u8; 1460];
        for _round in 0..100_000 {
            let mut progress = false;
            while let Some(n) = self.client.poll_transmit(&mut buf) {
                c2s.extend_from_slice(&buf[..n]);
                progress = true;
            }
            while !c2s.is_empty() && !server_closed {
                let k = self.rng.random_range(1..=c2s.len());
                let n = self.server.handle_input(
                    self.now,
                    &c2s[..k],
                    self.wall,
                    &mut self.handler,
                    &mut self.cat,
                );
                c2s.drain(..n);
                progress |= n > 0;
                if n < k {
                    break; // pipelining limit: offer the rest after output drains
                }
            }
            while let Some(out) = self.server.poll_output(&mut buf) {
                progress = true;
                match out {
                    Output::Bytes { len } => s2c.extend_from_slice(&buf[..len]),
                    Output::Body { image, range } => {
                        s2c.extend_from_slice(self.cat.slice(image, range).expect("image held"));
                        self.server.body_done(self.now, &mut self.cat);
                    }
                    Output::Close => server_closed = true,
                }
            }
            while !s2c.is_empty() {
                let k = self.rng.random_range(1..=s2c.len().min(5000));
                let chunk: Vec<u8> = s2c.drain(..k).collect();
                let mut events = Vec::new();
                self.client
                    .handle_input(&chunk, &mut events)
                    .expect("server speaks valid HTTP");
                self.absorb(&chunk, events);
                progress = true;
            }
            if server_closed && !self.client.is_closed() {
                let mut events = Vec::new();
                self.client.handle_eof(&mut events).expect("clean close");
                self.absorb(&[], events);
                progress = true;
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn absorb(&mut self, data: &[u8], events: Vec<ClientEvent>) {
        for e in events {
            match e {
                ClientEvent::Response {
                    request,
                    status,
                    content_type,
                    ..
                } => {
                    let a = self.answers.entry(request).or_default();
                    a.status = Some(status);
                    a.content_type = content_type;
                }
                ClientEvent::Delivered {
                    request,
                    offset,
                    range,
                } => {
                    let a = self.answers.entry(request).or_default();
                    let expected = a.first_offset.unwrap_or(offset) + a.body.len() as u64;
                    assert_eq!(offset, expected, "offsets are contiguous");
                    a.first_offset.get_or_insert(offset);
                    a.body.extend_from_slice(&data[range]);
                }
                ClientEvent::Finished { request } => {
                    self.answers.entry(request).or_default().finished = true;
                }
                ClientEvent::Closed { unanswered } => self.closed_unanswered = Some(unanswered),
            }
        }
    }
}

fn catalog(rng: &mut SmallRng) -> (MemoryCatalog, Vec<u8>) {
    let mut cat = MemoryCatalog::new();
    let wim: Vec<u8> = (0..300_001).map(|_| rng.random()).collect();
    cat.insert("sources/boot.wim", wim.clone());
    cat.insert("wimboot", b"wimboot-binary".to_vec());
    cat.insert("Boot/BCD", vec![0xbc; 16_384]);
    (cat, wim)
}

#[test]
fn full_and_ranged_downloads_are_byte_exact() {
    for seed in 0..6 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let (cat, wim) = catalog(&mut rng);
        let mut p = Pair::new(
            StaticFiles,
            cat,
            HttpConfig::default(),
            1 + seed as usize % 4,
            seed,
        );
        let host = "10.0.0.1:8050";
        let full = p.client.get("/sources/boot.wim", host, None);
        let bcd = p.client.get("/Boot/BCD", host, None);
        let ranges = [
            ByteRange::new(0, 1),
            ByteRange::new(299_999, 300_001),
            ByteRange::new(123_456, 200_000),
            ByteRange::new(250_000, u64::MAX),
        ];
        let ranged: Vec<u64> = ranges
            .iter()
            .map(|r| p.client.get("/sources/boot.wim", host, Some(*r)))
            .collect();
        let past_end = p.client.get(
            "/sources/boot.wim",
            host,
            Some(ByteRange::new(300_001, 300_010)),
        );
        let head = p.client.head("/sources/boot.wim", host);
        let missing = p.client.get("/../etc/passwd", host, None);
        p.drive();

        let a = &p.answers[&full];
        assert_eq!((a.status, a.finished), (Some(StatusCode::OK), true));
        assert!(a.body == wim, "seed {seed}: full body differs");
        assert_eq!(p.answers[&bcd].body, vec![0xbc; 16_384]);
        for (id, r) in ranged.iter().zip(ranges) {
            let a = &p.answers[id];
            assert_eq!(a.status, Some(StatusCode::PARTIAL_CONTENT));
            let end = r.end.min(wim.len() as u64) as usize;
            assert_eq!(a.first_offset, Some(r.start));
            assert!(a.body == wim[r.start as usize..end], "range {r:?}");
        }
        assert_eq!(
            p.answers[&past_end].status,
            Some(StatusCode::RANGE_NOT_SATISFIABLE)
        );
        assert!(p.answers[&head].body.is_empty() && p.answers[&head].finished);
        assert_eq!(p.answers[&missing].status, Some(StatusCode::NOT_FOUND));
        assert!(p.client.is_idle());
        assert_eq!(p.cat.total_open_refs(), 0, "every image reference released");
    }
}

#[test]
fn multipart_body_parses_back_into_the_ranges() {
    let mut rng = SmallRng::seed_from_u64(7);
    let (cat, wim) = catalog(&mut rng);
    let mut p = Pair::new(StaticFiles, cat, HttpConfig::default(), 1, 7);
    // The client asks for one range per request: send a multi-range head to the server
    // directly and parse the multipart answer here.
    let raw =
        b"GET /sources/boot.wim HTTP/1.1\r\nHost: h\r\nRange: bytes=0-9,100-199,-5,150-250\r\n\r\n";
    assert_eq!(
        p.server
            .handle_input(p.now, raw, p.wall, &mut p.handler, &mut p.cat),
        raw.len()
    );
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(o) = p.server.poll_output(&mut buf) {
        match o {
            Output::Bytes { len } => out.extend_from_slice(&buf[..len]),
            Output::Body { image, range } => {
                out.extend_from_slice(p.cat.slice(image, range).expect("held"));
                p.server.body_done(p.now, &mut p.cat);
            }
            Output::Close => unreachable!("keep-alive"),
        }
    }
    assert_eq!(p.cat.total_open_refs(), 0);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let head = std::str::from_utf8(&out[..head_end]).expect("ascii");
    assert!(head.starts_with("HTTP/1.1 206 "));
    let boundary = head
        .split("boundary=")
        .nth(1)
        .and_then(|b| b.split("\r\n").next())
        .expect("boundary");
    let len: usize = head
        .split("Content-Length: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.parse().ok())
        .expect("length");
    let body = &out[head_end..];
    assert_eq!(body.len(), len, "Content-Length matches the framed body");

    // RFC 2046 framing: parts between "--boundary" delimiters, closed by "--boundary--".
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    assert!(rest.starts_with(delimiter.as_bytes()));
    loop {
        rest = &rest[delimiter.len()..];
        if rest.starts_with(b"--\r\n") {
            assert_eq!(rest.len(), 4, "nothing after the close delimiter");
            break;
        }
        let part_head_end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part head")
            + 4;
        let part_head = std::str::from_utf8(&rest[..part_head_end]).expect("ascii");
        let cr = part_head
            .split("Content-Range: bytes ")
            .nth(1)
            .and_then(|v| v.split('/').next())
            .expect("content-range");
        let (a, b) = cr.split_once('-').expect("range");
        let (a, b): (usize, usize) = (a.parse().expect("a"), b.parse().expect("b"));
        let data_len = b - a + 1;
        let data = &rest[part_head_end..part_head_end + data_len];
        parts.push((a, data.to_vec()));
        rest = &rest[part_head_end + data_len..];
        assert!(rest.starts_with(b"\r\n"));
        rest = &rest[2..];
    }
    // Request order kept; 100-199 and 150-250 coalesced into 100-250.
    let starts: Vec<usize> = parts.iter().map(|p| p.0).collect();
    assert_eq!(starts, [0, 100, 299_996]);
    let lens: Vec<usize> = parts.iter().map(|p| p.1.len()).collect();
    assert_eq!(lens, [10, 151, 5]);
    for (start, data) in parts {
        assert!(data == wim[start..start + data.len()]);
    }
}

#[test]
fn server_close_tells_the_client_what_went_unanswered() {
    let mut rng = SmallRng::seed_from_u64(3);
    let (cat, _) = catalog(&mut rng);
    let config = HttpConfig {
        max_pipelined: 1,
        ..HttpConfig::default()
    };
    let mut p = Pair::new(StaticFiles, cat, config, 3, 3);
    let first = p.client.get("/wimboot", "h", None);
    // A request the server refuses and then closes on (too long a target).
    let long = format!("/{}", "a".repeat(3000));
    let bad = p.client.get(&long, "h", None);
    let after = p.client.get("/wimboot", "h", None);
    p.drive();
    assert_eq!(p.answers[&first].body, b"wimboot-binary");
    assert_eq!(p.answers[&bad].status, Some(StatusCode::URI_TOO_LONG));
    assert_eq!(p.closed_unanswered, Some(vec![after]));
    assert!(p.server.is_closed());
    assert_eq!(p.cat.total_open_refs(), 0);
}

#[test]
fn ipxe_flow_script_then_files() {
    let mut rng = SmallRng::seed_from_u64(11);
    let (cat, wim) = catalog(&mut rng);
    let menu = BootMenu {
        entries: vec![MenuEntry {
            id: "win".into(),
            label: "WinPE".into(),
            kind: EntryKind::Winpe {
                wimboot: "wimboot".into(),
                bcd: "Boot/BCD".into(),
                boot_sdi: "Boot/boot.sdi".into(),
                boot_wim: "sources/boot.wim".into(),
            },
        }],
        default: Some("win".into()),
        ..BootMenu::default()
    };
    let scripts = BootScripts {
        menu: Arc::new(menu),
        ..BootScripts::default()
    };
    let mut p = Pair::new(scripts, cat, HttpConfig::default(), 2, 11);
    let script = p.client.get(
        "/boot.ipxe?mac=52:54:00:12:34:56&arch=x86_64",
        "10.0.0.1:8050",
        None,
    );
    let wim_id = p.client.get("/sources/boot.wim", "10.0.0.1:8050", None);
    p.drive();
    let text = String::from_utf8(p.answers[&script].body.clone()).expect("utf-8");
    assert!(
        text.contains("initrd -n boot.wim http://10.0.0.1:8050/sources/boot.wim boot.wim"),
        "{text}"
    );
    assert_eq!(
        p.answers[&script].content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(p.answers[&wim_id].body == wim);
    assert_eq!(p.cat.total_open_refs(), 0);
}
