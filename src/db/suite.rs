//! Behaviour tests shared by both backends: each function takes the URL of a fresh, empty
//! database and panics on the first difference. The unit tests run them on SQLite files; the
//! integration tests (tests/integration/db.rs) on a real PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use zpxe_engine::dhcp::{ClientUuid, MacAddr};

use super::*;

/// A writer configuration for tests: retention only when asked, a fast registry poll.
pub fn test_writer(batch_events: usize, interval_ms: u64) -> WriterConfig {
    WriterConfig {
        batch_events,
        batch_interval: Duration::from_millis(interval_ms),
        retention: Retention {
            boots_per_machine: 0,
            days: 0,
        },
        retention_every: Duration::from_secs(3600),
        registry_poll: Duration::from_millis(50),
        rules: BootRules {
            gap_ms: 30 * 60_000,
            final_stage: "loaded".into(),
        },
    }
}

pub fn open(url: &str, cfg: WriterConfig) -> Database {
    Database::with_backends(
        connect(url).expect("writer connection"),
        connect(url).expect("reader connection"),
        16_384,
        cfg,
    )
    .expect("database")
}

pub fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
}

pub fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))
}

fn flush(db: &Database) {
    assert!(
        db.recorder().flush(Duration::from_secs(30)),
        "the writer did not flush"
    );
}

/// A firmware boot as the services report it: DHCP offer (MAC only), PXE ack (MAC and
/// address), a TFTP file (address only), iPXE's DHCP, the script, an HTTP file, the script's
/// stages.
pub fn boot_events(n: u32, t: i64) -> Vec<Event> {
    let (m, a) = (mac(n), ip(n));
    let uuid = ClientUuid::from_wire([n as u8; 16]);
    vec![
        Event::now(EventKind::DhcpOffer {
            arch: Some(7),
            ipxe: false,
        })
        .mac(m)
        .uuid(Some(uuid))
        .at(t),
        Event::now(EventKind::PxeAck { arch: Some(7) })
            .mac(m)
            .ip(a)
            .at(t + 1),
        Event::now(EventKind::TftpStart {
            file: Name::new("ipxe.efi"),
        })
        .ip(a)
        .at(t + 2),
        Event::now(EventKind::TftpEnd {
            file: Name::new("ipxe.efi"),
            bytes: 1_000_000,
            retransmits: 2,
            duration_ms: 40,
            outcome: Outcome::Ok,
        })
        .ip(a)
        .at(t + 3),
        Event::now(EventKind::DhcpOffer {
            arch: Some(7),
            ipxe: true,
        })
        .mac(m)
        .ip(a)
        .at(t + 4),
        Event::now(EventKind::ScriptFetch {
            path: Name::new("boot.ipxe"),
            status: 200,
        })
        .ip(a)
        .at(t + 5),
        Event::now(EventKind::Stage {
            stage: Stage::new("chosen"),
            detail: Detail::new("winpe"),
        })
        .mac(m)
        .ip(a)
        .at(t + 6),
        Event::now(EventKind::HttpFile {
            path: Name::new("winpe/boot.wim"),
            bytes: 300_000_000,
            duration_ms: 2500,
            range: Some((0, 299_999_999)),
            status: 206,
            outcome: Outcome::Ok,
        })
        .ip(a)
        .at(t + 7),
        Event::now(EventKind::Stage {
            stage: Stage::new("loaded"),
            detail: Detail::EMPTY,
        })
        .mac(m)
        .ip(a)
        .at(t + 8),
    ]
}

const BOOT_KINDS: [&str; 9] = [
    "dhcp-offer",
    "pxe-ack",
    "tftp-start",
    "tftp-end",
    "ipxe-dhcp",
    "script-fetch",
    "stage",
    "http-file",
    "stage",
];

/// Migrating twice (and opening twice) applies each migration once.
pub fn migrations_idempotent(url: &str) {
    let mut a = connect(url).expect("first open");
    assert_eq!(a.migrate().expect("again"), 3);
    let mut b = connect(url).expect("second open");
    assert_eq!(b.migrate().expect("again"), 3);
    let mut versions = Vec::new();
    b.read(&mut |sql| {
        sql.query(
            "SELECT version FROM schema_version ORDER BY version",
            &[],
            &mut |r| {
                versions.push(r.int(0)?);
                Ok(())
            },
        )
    })
    .expect("schema_version");
    assert_eq!(
        versions,
        [Some(1), Some(2), Some(3)],
        "each migration recorded once"
    );
    b.check().expect("check");
}

/// Full batches close at `batch_events`; a partial one waits for its interval (or a flush).
pub fn batching(url: &str) {
    // A long interval: only size and flushes close batches, so the count is exact.
    let db = open(url, test_writer(1000, 60_000));
    let rec = db.recorder();
    let t = now_ms();
    for i in 0..2500u32 {
        rec.record(
            Event::now(EventKind::DhcpOffer {
                arch: None,
                ipxe: false,
            })
            .mac(mac(i))
            .at(t),
        );
    }
    flush(&db);
    let s = db.stats();
    assert_eq!(s.written.load(Relaxed), 2500);
    assert_eq!(s.batches.load(Relaxed), 3, "1000 + 1000 + the flushed 500");
    assert_eq!(s.dropped.load(Relaxed), 0);
    assert_eq!(s.queued.load(Relaxed), 0);
    drop(db);

    // A short interval: a partial batch is written without any flush.
    let db = open(url, test_writer(1000, 50));
    let rec = db.recorder();
    for i in 0..10u32 {
        rec.record(
            Event::now(EventKind::DhcpOffer {
                arch: None,
                ipxe: false,
            })
            .mac(mac(10_000 + i)),
        );
    }
    let start = Instant::now();
    while db.stats().written.load(Relaxed) < 10 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(db.stats().written.load(Relaxed), 10);
    assert_eq!(db.stats().batches.load(Relaxed), 1, "10 events, one batch");
    assert_eq!(db.clients(&ClientQuery::default()).unwrap().total, 2510);
}

/// A full queue drops and counts; it never waits. The writer here is stalled (not started).
pub fn drop_and_count(url: &str) {
    let (rec, q) = queue(4);
    let t = now_ms();
    let start = Instant::now();
    for i in 0..10u32 {
        rec.record(
            Event::now(EventKind::DhcpOffer {
                arch: None,
                ipxe: false,
            })
            .mac(mac(i))
            .at(t),
        );
    }
    assert!(start.elapsed() < Duration::from_secs(1), "record() waited");
    let stats = rec.stats().clone();
    assert_eq!(stats.dropped.load(Relaxed), 6);
    assert_eq!(stats.queued.load(Relaxed), 4, "queue depth gauge");
    let registry = Arc::new(Registry::default());
    let writer =
        Writer::spawn(connect(url).unwrap(), q, test_writer(1000, 10), registry).expect("writer");
    assert!(rec.flush(Duration::from_secs(30)));
    assert_eq!(stats.written.load(Relaxed), 4);
    assert_eq!(stats.queued.load(Relaxed), 0);
    drop(rec);
    writer.join();
    let mut reader = connect(url).unwrap();
    let mut n = 0;
    reader
        .read(&mut |sql| {
            sql.query("SELECT COUNT(*) FROM events", &[], &mut |r| {
                n = r.int(0)?.unwrap_or(0);
                Ok(())
            })
        })
        .unwrap();
    assert_eq!(n, 4, "the four queued events, no more");
}

/// Events become one timeline per boot, legs known only by address included; the queries
/// filter and page.
pub fn grouping_and_queries(url: &str) {
    let db = open(url, test_writer(1000, 10));
    let rec = db.recorder();
    let t = now_ms() - 60_000;
    for n in 1..=5u32 {
        for e in boot_events(n, t + i64::from(n) * 100) {
            rec.record(e);
        }
    }
    // Machine 1 retries DHCP before its boot moves on (same boot), then reboots (new boot),
    // and its iPXE DHCP does not start one.
    let m = mac(1);
    let later = t + 10_000;
    for k in 0..3 {
        rec.record(
            Event::now(EventKind::DhcpOffer {
                arch: Some(7),
                ipxe: false,
            })
            .mac(m)
            .at(later + k),
        );
    }
    rec.record(
        Event::now(EventKind::DhcpOffer {
            arch: Some(7),
            ipxe: true,
        })
        .mac(m)
        .ip(ip(1))
        .at(later + 5),
    );
    // A transfer nobody can be found for.
    rec.record(
        Event::now(EventKind::TftpStart {
            file: Name::new("stray"),
        })
        .ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)))
        .at(later + 6),
    );
    flush(&db);
    assert_eq!(db.stats().unattributed.load(Relaxed), 1);

    let boots = db.boots_of(m, 10).unwrap();
    assert_eq!(boots.len(), 2, "{boots:#?}");
    let (second, first) = (&boots[0], &boots[1]);
    let kinds: Vec<&str> = first.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, BOOT_KINDS, "the whole first boot, in order");
    assert_eq!(first.boot.outcome.as_deref(), Some("ok"));
    assert_eq!(first.boot.stage, "loaded");
    assert!(first.boot.finished_ms.is_some());
    let tftp = &first.events[3];
    assert_eq!(tftp.name.as_deref(), Some("ipxe.efi"));
    assert_eq!(
        (tftp.bytes, tftp.retransmits, tftp.duration_ms),
        (Some(1_000_000), Some(2), Some(40))
    );
    assert_eq!(tftp.outcome.as_deref(), Some("ok"));
    let http = &first.events[7];
    assert_eq!(http.range, Some((0, 299_999_999)));
    assert_eq!(http.status, Some(206));
    let kinds: Vec<&str> = second.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["dhcp-offer", "dhcp-offer", "dhcp-offer", "ipxe-dhcp"],
        "DHCP retries and iPXE's DHCP join the reboot's timeline"
    );
    assert_eq!(second.boot.stage, "ipxe");
    assert_eq!(second.boot.outcome, None);

    let all = db.clients(&ClientQuery::default()).unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(all.clients[0].mac, Some(m), "most recently seen first");
    assert_eq!(all.clients[0].boots, 2);
    assert_eq!(all.clients[0].ip, Some(ip(1)));
    assert_eq!(
        all.clients[0].uuid,
        Some(ClientUuid::from_wire([1; 16])),
        "UUID from the firmware's DHCP"
    );
    assert_eq!(all.clients[0].arch, Some(7));
    let by_stage = db
        .clients(&ClientQuery {
            stage: Some("loaded".into()),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(by_stage.total, 4);
    assert!(by_stage.clients.iter().all(|c| c.stage == "loaded"));
    let one = db
        .clients(&ClientQuery {
            mac: Some(mac(3)),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(one.total, 1);
    assert_eq!(one.clients[0].boot.as_ref().unwrap().stage, "loaded");
    let net = db
        .clients(&ClientQuery {
            subnet: Some("10.0.0.0/30".parse().unwrap()),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(net.total, 3, "10.0.0.1 to .3");
    let none = db
        .clients(&ClientQuery {
            subnet: Some("10.0.1.0/24".parse().unwrap()),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(none.total, 0);
    let v6 = db
        .clients(&ClientQuery {
            subnet: Some("::ffff:10.0.0.0/120".parse().unwrap()),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(v6.total, 5, "IPv4 clients as IPv4-mapped IPv6");
    let page = db
        .clients(&ClientQuery {
            offset: 2,
            limit: 2,
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!((page.total, page.clients.len()), (5, 2));
    assert_eq!(page.clients[0].mac, all.clients[2].mac);
    let recent = db
        .clients(&ClientQuery {
            since_ms: Some(later),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(recent.total, 1);
    let old = db
        .clients(&ClientQuery {
            until_ms: Some(later),
            ..ClientQuery::default()
        })
        .unwrap();
    assert_eq!(old.total, 4);

    let counts = db.stage_counts().unwrap();
    assert_eq!(
        counts,
        vec![
            StageCount {
                stage: "ipxe".into(),
                machines: 1
            },
            StageCount {
                stage: "loaded".into(),
                machines: 4
            },
        ]
    );
    let since = db.boots_since(later, 100).unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].mac, Some(m));
    assert_eq!(db.boots_since(t, 100).unwrap().len(), 6);
}

/// Each machine keeps its last N boots; days drop old boots, stray events and machines.
pub fn retention(url: &str) {
    let db = open(url, test_writer(1000, 10));
    let rec = db.recorder();
    let t = now_ms() - 3_600_000;
    for b in 0..5i64 {
        for e in boot_events(1, t + b * 60_000) {
            rec.record(e);
        }
        for e in boot_events(2, t + b * 60_000) {
            rec.record(e);
        }
    }
    // A machine last seen 100 days ago, and a stray event as old.
    let ancient = now_ms() - 100 * 86_400_000;
    for e in boot_events(3, ancient) {
        rec.record(e);
    }
    rec.record(
        Event::now(EventKind::TftpStart {
            file: Name::new("old"),
        })
        .ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        .at(ancient),
    );
    flush(&db);
    assert_eq!(db.boots_of(mac(1), 100).unwrap().len(), 5);
    let removed = db
        .apply_retention(Retention {
            boots_per_machine: 2,
            days: 0,
        })
        .unwrap();
    assert_eq!(removed, 6, "three boots of each of two machines");
    let kept = db.boots_of(mac(1), 100).unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].boot.started_ms, t + 4 * 60_000, "the newest stay");
    assert_eq!(kept[1].boot.started_ms, t + 3 * 60_000);
    assert!(kept.iter().all(|b| b.events.len() == BOOT_KINDS.len()));
    assert_eq!(db.boots_of(mac(3), 100).unwrap().len(), 1);

    db.apply_retention(Retention {
        boots_per_machine: 0,
        days: 90,
    })
    .unwrap();
    assert!(db.boots_of(mac(3), 100).unwrap().is_empty());
    let all = db.clients(&ClientQuery::default()).unwrap();
    assert_eq!(all.total, 2, "the machine unseen for 100 days is gone");
    let mut events = 0;
    let mut conn = connect(url).unwrap();
    conn.read(&mut |sql| {
        sql.query("SELECT COUNT(*) FROM events", &[], &mut |r| {
            events = r.int(0)?.unwrap_or(0);
            Ok(())
        })
    })
    .unwrap();
    assert_eq!(
        events,
        2 * 2 * BOOT_KINDS.len() as i64,
        "only kept boots' events"
    );
}

fn record(mac_n: Option<u32>, uuid: Option<u8>, name: &str) -> MachineRecord {
    MachineRecord {
        mac: mac_n.map(mac),
        uuid: uuid.map(|u| ClientUuid::from_wire([u; 16])),
        name: name.into(),
        group: "lab".into(),
        entry: Some("winpe".into()),
        loader: None,
        variables: BTreeMap::from([("site".to_owned(), "north".to_owned())]),
        boot_once: false,
        state: BootOnceState::Pending,
        updated_ms: 0,
        source: None,
    }
}

/// Put, get, list, update, delete; the snapshot follows every change.
pub fn registry_crud(url: &str) {
    let db = open(url, test_writer(1000, 10));
    let registry = db.registry();
    let g0 = registry.load().generation();
    assert!(db.machines().unwrap().is_empty());

    let a = record(Some(1), None, "alpha");
    db.put_machine(&a).unwrap();
    let got = db.machine(MachineKey::Mac(mac(1))).unwrap().unwrap();
    assert_eq!(got.name, "alpha");
    assert_eq!(got.variables["site"], "north");
    assert!(got.updated_ms > 0);
    assert!(registry.load().generation() > g0);
    match registry.load().decide(mac(1), None) {
        Some(Decision::Use(r)) => assert_eq!(r.entry.as_deref(), Some("winpe")),
        other => panic!("{other:?}"),
    }

    // Same MAC: replaced, not added.
    let mut a2 = a.clone();
    a2.name = "alpha-2".into();
    a2.loader = Some("ipxe.efi".into());
    db.put_machine(&a2).unwrap();
    assert_eq!(db.machines().unwrap().len(), 1);
    assert_eq!(
        registry.load().get(mac(1), None).unwrap().loader.as_deref(),
        Some("ipxe.efi")
    );

    // By UUID only; found by UUID when the MAC is unknown.
    let b = record(None, Some(9), "bravo");
    db.put_machine(&b).unwrap();
    let uuid9 = ClientUuid::from_wire([9; 16]);
    assert_eq!(
        db.machine(MachineKey::Uuid(uuid9)).unwrap().unwrap().name,
        "bravo"
    );
    assert_eq!(
        registry.load().get(mac(77), Some(uuid9)).unwrap().name,
        "bravo"
    );
    assert_eq!(registry.load().len(), 2);

    // A MAC of one record with the UUID of another is refused.
    let both = record(Some(1), Some(9), "x");
    assert!(db.put_machine(&both).is_err());
    // Invalid records are refused before the database.
    let mut bad = record(Some(2), None, "bad");
    bad.variables.insert("no spaces".into(), "v".into());
    assert!(db.put_machine(&bad).is_err());
    assert!(db.put_machine(&record(None, None, "nobody")).is_err());

    assert!(db.delete_machine(MachineKey::Mac(mac(1))).unwrap());
    assert!(!db.delete_machine(MachineKey::Mac(mac(1))).unwrap());
    assert!(registry.load().get(mac(1), None).is_none());
    assert_eq!(db.machines().unwrap().len(), 1);

    // Records survive a reopen.
    drop(db);
    let db = open(url, test_writer(1000, 10));
    assert_eq!(db.machines().unwrap()[0].name, "bravo");
    assert_eq!(db.registry().load().len(), 1);
}

/// A boot-once machine that reports the final stage gets `exit` at its next boot; others and
/// failed boots do not.
pub fn boot_once(url: &str) {
    let db = open(url, test_writer(1000, 10));
    let registry = db.registry();
    let mut once = record(Some(1), None, "once");
    once.boot_once = true;
    db.put_machine(&once).unwrap();
    db.put_machine(&record(Some(2), None, "always")).unwrap();
    let mut failing = record(Some(3), None, "failing");
    failing.boot_once = true;
    db.put_machine(&failing).unwrap();
    assert!(matches!(
        registry.load().decide(mac(1), None),
        Some(Decision::Use(_))
    ));
    assert_eq!(registry.load().decide(mac(4), None), None);

    let rec = db.recorder();
    let t = now_ms();
    // Part of a boot: not deployed yet.
    for e in boot_events(1, t).into_iter().take(7) {
        rec.record(e);
    }
    flush(&db);
    assert!(matches!(
        registry.load().decide(mac(1), None),
        Some(Decision::Use(_))
    ));
    for e in boot_events(1, t).into_iter().skip(7) {
        rec.record(e);
    }
    for e in boot_events(2, t) {
        rec.record(e);
    }
    rec.record(
        Event::now(EventKind::Stage {
            stage: Stage::new("failed"),
            detail: Detail::new("no disk"),
        })
        .mac(mac(3))
        .at(t),
    );
    flush(&db);
    assert_eq!(registry.load().decide(mac(1), None), Some(Decision::Exit));
    assert_eq!(
        db.machine(MachineKey::Mac(mac(1))).unwrap().unwrap().state,
        BootOnceState::Deployed
    );
    assert!(matches!(
        registry.load().decide(mac(2), None),
        Some(Decision::Use(_))
    ));
    assert!(matches!(
        registry.load().decide(mac(3), None),
        Some(Decision::Use(_))
    ));
    let failed = db.boots_of(mac(3), 1).unwrap();
    assert_eq!(failed[0].boot.outcome.as_deref(), Some("failed"));

    // An admin re-arms it.
    let mut rearmed = db.machine(MachineKey::Mac(mac(1))).unwrap().unwrap();
    rearmed.state = BootOnceState::Pending;
    db.put_machine(&rearmed).unwrap();
    assert!(matches!(
        registry.load().decide(mac(1), None),
        Some(Decision::Use(_))
    ));
}

/// A boot-once machine of the configuration (`[[machine]]`): deployed by its final stage like
/// a database record, the state kept in `file_deployed` across a restart, re-armed by key.
pub fn file_boot_once(url: &str) {
    let file_record = |n: u32| MachineRecord {
        boot_once: true,
        source: Some(format!("conf.d/lab.toml:{n}:1")),
        ..record(Some(n), None, "from-file")
    };
    {
        let db = open(url, test_writer(1000, 10));
        let registry = db.registry();
        registry.set_files(vec![file_record(1), file_record(2)]);
        assert!(matches!(
            registry.load().decide(mac(1), None),
            Some(Decision::Use(_))
        ));
        let rec = db.recorder();
        let t = now_ms();
        for e in boot_events(1, t) {
            rec.record(e);
        }
        flush(&db);
        assert_eq!(registry.load().decide(mac(1), None), Some(Decision::Exit));
        // The other file record, and the database, are untouched.
        assert!(matches!(
            registry.load().decide(mac(2), None),
            Some(Decision::Use(_))
        ));
        assert!(db.machines().unwrap().is_empty(), "no database record made");
        db.close();
    }
    // A restart: the configuration's records again, the state from the database.
    let db = open(url, test_writer(1000, 10));
    let registry = db.registry();
    assert_eq!(registry.load().decide(mac(1), None), None, "no files yet");
    registry.set_files(vec![file_record(1), file_record(2)]);
    assert_eq!(registry.load().decide(mac(1), None), Some(Decision::Exit));
    // Re-armed.
    let key = file_key(Some(mac(1)), None).unwrap();
    assert!(db.rearm_file_machine(&key).unwrap());
    assert!(matches!(
        registry.load().decide(mac(1), None),
        Some(Decision::Use(_))
    ));
    assert!(!db.rearm_file_machine(&key).unwrap(), "already pending");
}

/// Client-controlled text is stored and read back as data.
pub fn hostile_text(url: &str) {
    const NASTY: [&str; 4] = [
        "'; DROP TABLE machines; --",
        "<script>alert(1)</script>",
        "\" OR 1=1 -- $1 ?1 :x @y",
        "Robert'); DELETE FROM events;--",
    ];
    let db = open(url, test_writer(1000, 10));
    let rec = db.recorder();
    let t = now_ms();
    for (i, s) in NASTY.iter().enumerate() {
        let m = mac(100 + i as u32);
        rec.record(
            Event::now(EventKind::DhcpOffer {
                arch: None,
                ipxe: false,
            })
            .mac(m)
            .ip(ip(100 + i as u32))
            .at(t),
        );
        rec.record(
            Event::now(EventKind::TftpStart { file: Name::new(s) })
                .ip(ip(100 + i as u32))
                .at(t + 1),
        );
        rec.record(
            Event::now(EventKind::Stage {
                stage: Stage::new(s),
                detail: Detail::new(s),
            })
            .mac(m)
            .at(t + 2),
        );
        rec.record(
            Event::now(EventKind::Error {
                leg: Leg::Http,
                detail: Detail::new(s),
            })
            .mac(m)
            .at(t + 3),
        );
    }
    flush(&db);
    for (i, s) in NASTY.iter().enumerate() {
        let boots = db.boots_of(mac(100 + i as u32), 1).unwrap();
        let ev = &boots[0].events;
        assert_eq!(ev[1].name.as_deref(), Some(Name::new(s).as_str()));
        assert_eq!(ev[2].name.as_deref(), Some(Stage::new(s).as_str()));
        assert_eq!(ev[2].detail.as_deref(), Some(*s));
        assert_eq!(ev[3].detail.as_deref(), Some(*s));
        let by_stage = db
            .clients(&ClientQuery {
                stage: Some(Stage::new(s).as_str().to_owned()),
                ..ClientQuery::default()
            })
            .unwrap();
        assert_eq!(by_stage.total, 1, "{s}");
    }
    assert_eq!(db.clients(&ClientQuery::default()).unwrap().total, 4);
    assert_eq!(db.recent_errors(100).unwrap().len(), 4);

    let mut r = record(Some(200), None, NASTY[0]);
    r.group = NASTY[1].into();
    r.entry = Some(NASTY[2].into());
    r.variables.insert("x".into(), NASTY[3].into());
    db.put_machine(&r).unwrap();
    let back = db.machine(MachineKey::Mac(mac(200))).unwrap().unwrap();
    assert_eq!(back.name, NASTY[0]);
    assert_eq!(back.group, NASTY[1]);
    assert_eq!(back.entry.as_deref(), Some(NASTY[2]));
    assert_eq!(back.variables["x"], NASTY[3]);
    db.check().unwrap();
}

/// Two servers (two databases with their own writers) on one store: each one's queries see
/// every client, and each boot stays whole.
pub fn two_recorders(url: &str) {
    let a = open(url, test_writer(1000, 10));
    let b = open(url, test_writer(1000, 10));
    let t = now_ms();
    let (ra, rb) = (a.recorder(), b.recorder());
    let clients = 200u32;
    let threads: Vec<_> = [(ra, 0u32), (rb, 1u32)]
        .into_iter()
        .map(|(rec, half)| {
            std::thread::spawn(move || {
                for n in (1..=clients).filter(|n| n % 2 == half) {
                    for e in boot_events(n, t + i64::from(n)) {
                        rec.record(e);
                    }
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    flush(&a);
    flush(&b);
    for db in [&a, &b] {
        let page = db
            .clients(&ClientQuery {
                limit: 1000,
                ..ClientQuery::default()
            })
            .unwrap();
        assert_eq!(page.total, u64::from(clients));
        assert!(
            page.clients
                .iter()
                .all(|c| c.stage == "loaded" && c.boots == 1)
        );
        for n in [1, 2, clients - 1, clients] {
            let boots = db.boots_of(mac(n), 5).unwrap();
            assert_eq!(boots.len(), 1);
            assert_eq!(boots[0].events.len(), BOOT_KINDS.len());
        }
    }
    assert_eq!(
        a.stats().dropped.load(Relaxed) + b.stats().dropped.load(Relaxed),
        0
    );
    assert_eq!(
        a.stats().lost.load(Relaxed) + b.stats().lost.load(Relaxed),
        0
    );
}

/// The DHCP server's leases: written in one transaction per batch, reported written, read back
/// with the time left; a second write of an address replaces the first (one row per address).
pub fn leases_persist(url: &str) {
    use zpxe_engine::dhcp::leases::{ClientKey, LeaseRecord, LeaseState};

    let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
    let lease = |ip: [u8; 4], n: u8, state: LeaseState, secs: u64| LeaseRecord {
        ip: Ipv4Addr::from(ip),
        state,
        client: Some(ClientKey::from_mac(mac(n))),
        mac: mac(n),
        remaining: Duration::from_secs(secs),
    };
    let mut store = super::leases::LeaseStore::spawn(connect(url).expect("open")).expect("spawn");
    assert!(store.submit(1, &[lease([10, 0, 0, 100], 1, LeaseState::Bound, 600)]));
    assert!(store.submit(
        2,
        &[
            lease([10, 0, 0, 101], 2, LeaseState::Bound, 600),
            lease([10, 0, 0, 102], 3, LeaseState::Declined, 60),
        ]
    ));
    // The client of .101 gives it back.
    assert!(store.submit(3, &[lease([10, 0, 0, 101], 2, LeaseState::Released, 0)]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = Vec::new();
    while done.len() < 3 && Instant::now() < deadline {
        done.extend(store.take_done());
        std::thread::sleep(Duration::from_millis(5));
    }
    done.sort_unstable();
    assert_eq!(done, [(1, true), (2, true), (3, true)]);
    store.close();

    let mut b = connect(url).expect("reopen");
    let mut got = super::leases::load(b.as_mut()).expect("load");
    got.sort_by_key(|r| r.ip);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].ip, Ipv4Addr::new(10, 0, 0, 100));
    assert_eq!(got[0].state, LeaseState::Bound);
    assert_eq!(got[0].mac, mac(1));
    assert_eq!(got[0].client, Some(ClientKey::from_mac(mac(1))));
    assert!(
        got[0].remaining > Duration::from_secs(590) && got[0].remaining <= Duration::from_secs(600),
        "{:?}",
        got[0].remaining
    );
    assert_eq!(got[1].state, LeaseState::Released);
    assert_eq!(got[1].remaining, Duration::ZERO);
    assert_eq!(got[2].state, LeaseState::Declined);
    assert_eq!(got[2].client, Some(ClientKey::from_mac(mac(3))));
    drop(b);

    // The server opens its lease table where `leases_url` says: leases written in the shared
    // SQLite file before the lease file existed move there once, and none is lost or doubled.
    for _ in 0..2 {
        let (file, mut opened) = super::leases::open(url).expect("open the lease table");
        drop(file);
        opened.sort_by_key(|r| r.ip);
        let ips: Vec<Ipv4Addr> = opened.iter().map(|r| r.ip).collect();
        assert_eq!(ips, got.iter().map(|r| r.ip).collect::<Vec<_>>());
        assert_eq!(opened[1].state, LeaseState::Released);
    }
    if super::leases_url(url).expect("url") != url {
        let mut shared = connect(url).expect("reopen");
        let left = super::leases::load(shared.as_mut()).expect("load");
        assert!(left.is_empty(), "still in the shared file: {left:?}");
    }
}
