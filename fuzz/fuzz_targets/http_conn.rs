//! One HTTP connection on the boot port (files and iPXE scripts), fed the bytes of a client in
//! arbitrary pieces, with output drained fully, partly or not at all, time passing and the
//! client closing its side.
//!
//! Input: a config byte, then records of a tag byte and, for input, a u16 length and the
//! bytes.
//! Oracles: no panic; consumed bytes never exceed what was offered; bodies name bytes inside
//! their image; after the connection is aborted no image reference is left.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use zpxe_engine::http::{
    BootMenu, BootRule, BootScripts, EntryKind, HttpConfig, HttpConnection, MenuEntry, Output,
};
use zpxe_engine::image::MemoryCatalog;
use zpxe_fuzz::Script;

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
                id: "debian".into(),
                label: "Debian".into(),
                kind: EntryKind::Linux {
                    kernel: "debian/linux".into(),
                    initrd: Some("debian/initrd.gz".into()),
                    cmdline: "priority=critical".into(),
                },
            },
            MenuEntry {
                id: "local".into(),
                label: "Local disk".into(),
                kind: EntryKind::Exit,
            },
        ],
        rules: vec![
            BootRule {
                mac: vec!["52:54:00:12:34:56".parse().expect("mac")],
                entry: Some("debian".into()),
                ..BootRule::default()
            },
            BootRule {
                arch: vec!["arm64".parse().expect("arch")],
                entry: Some("local".into()),
                ..BootRule::default()
            },
        ],
        ..BootMenu::default()
    }
}

fn catalog() -> MemoryCatalog {
    let mut images = MemoryCatalog::new();
    images.insert(
        "boot.wim",
        (0..10_000u32).map(|i| (i % 251) as u8).collect(),
    );
    images.insert("sources/boot.wim", vec![3; 70_000]);
    images.insert("ipxe.efi", vec![9; 1000]);
    images.insert("Boot/BCD", vec![1; 300]);
    images.insert("empty", Vec::new());
    images
}

struct Run {
    conn: HttpConnection,
    handler: BootScripts,
    images: MemoryCatalog,
    pending: Vec<u8>,
    now: Instant,
    wall: SystemTime,
    eof: bool,
    closed: bool,
    buf: Vec<u8>,
}

impl Run {
    fn feed(&mut self) {
        if self.eof || self.closed || !self.conn.wants_input() || self.pending.is_empty() {
            return;
        }
        let n = self.conn.handle_input(
            self.now,
            &self.pending,
            self.wall,
            &mut self.handler,
            &mut self.images,
        );
        assert!(
            n <= self.pending.len(),
            "consumed {n} of {}",
            self.pending.len()
        );
        self.pending.drain(..n);
    }

    /// Drains up to `max` outputs; true if any came.
    fn drain(&mut self, max: usize) -> bool {
        let mut any = false;
        for _ in 0..max {
            let Some(out) = self.conn.poll_output(&mut self.buf) else {
                break;
            };
            any = true;
            match out {
                Output::Bytes { len } => assert!(len > 0 && len <= self.buf.len()),
                Output::Body { image, range } => {
                    assert!(
                        self.images.slice(image, range).is_some(),
                        "body {range:?} outside image {image:?}"
                    );
                    self.conn.body_done(self.now, &mut self.images);
                }
                Output::Close => {
                    self.closed = true;
                    assert!(self.conn.is_closed());
                }
                _ => {}
            }
        }
        while self.conn.poll_event().is_some() {}
        any
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script::new(data);
    let c = script.byte();
    let config = HttpConfig {
        max_pipelined: usize::from(c & 3) + 1,
        multipart: c & 4 == 0,
        max_ranges: if c & 8 == 0 { 16 } else { 1 },
        max_request_line: if c & 16 == 0 { 2048 } else { 64 },
        max_header_bytes: if c & 16 == 0 { 8192 } else { 128 },
        max_headers: if c & 16 == 0 { 64 } else { 3 },
        ..HttpConfig::default()
    };
    let now = Instant::now();
    let mut run = Run {
        conn: HttpConnection::new(now, Arc::new(config)),
        handler: BootScripts {
            menu: Arc::new(menu()),
            base_url: (c & 32 != 0).then(|| "http://10.0.0.1:8050".to_owned()),
            report_url: (c & 64 != 0).then(|| "http://10.0.0.1:8051/report".to_owned()),
            ..BootScripts::default()
        },
        images: catalog(),
        pending: Vec::new(),
        now,
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        eof: false,
        closed: false,
        buf: vec![0u8; if c & 128 == 0 { 16 * 1024 } else { 7 }],
    };

    let mut steps = 0;
    while !script.is_empty() && steps < 256 {
        steps += 1;
        let tag = script.byte();
        match tag & 3 {
            0 => {
                let piece = script.record();
                if !run.eof {
                    run.pending.extend_from_slice(piece);
                }
                run.feed();
            }
            1 => {
                while run.drain(64) {
                    run.feed();
                }
            }
            2 => {
                run.drain(1);
                run.feed();
            }
            _ => {
                let step = Duration::from_millis(u64::from(script.byte()) * 250);
                run.now += step;
                run.wall += step;
                if run.conn.poll_timeout().is_some_and(|t| t <= run.now) {
                    run.conn.handle_timeout(run.now);
                }
            }
        }
        if tag & 0x1c == 0x1c && !run.eof {
            run.eof = true;
            run.conn.handle_eof(run.now);
        }
    }
    // The client reads everything the server has to say.
    let mut rounds = 0;
    while run.drain(64) {
        run.feed();
        rounds += 1;
        assert!(rounds < 10_000, "output never ends");
    }
    run.conn.abort(&mut run.images);
    assert_eq!(run.images.total_open_refs(), 0, "an image is still held");
});
