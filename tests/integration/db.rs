//! The database behind boot reporting and the machine registry (src/db): the behaviour suite on
//! a real PostgreSQL (Debian's package, started here in a temporary data directory as the
//! unprivileged `postgres` user, on a Unix socket only), and kill -9 of a process writing
//! through SQLite.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zpxe::db::{self, ClientQuery, suite};

/// Debian's PostgreSQL server programs (the newest installed version).
fn pg_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = std::fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run tests/run-all.sh, which installs postgresql",
                root.display()
            )
        })
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
        .filter(|v: &u32| root.join(v.to_string()).join("bin/initdb").is_file())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .unwrap_or_else(|| panic!("no PostgreSQL server under {}", root.display()));
    root.join(v.to_string()).join("bin")
}

/// A throwaway PostgreSQL cluster, listening on a Unix socket in its own directory only.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    pid: u32,
}

const PG_PORT: u16 = 5432;

impl Postgres {
    pub(crate) fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(ok.success(), "chown the data directory to postgres");
        let data = dir.path().join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-k {} -p {PG_PORT} -c listen_addresses='' -c fsync=on",
            dir.path().display()
        );
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start");
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
        let pid = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("a PID in postmaster.pid");
        Self { dir, pid }
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgres:///{db}?host={}&port={PG_PORT}&user=postgres",
            self.dir.path().display()
        )
    }

    /// A new empty database.
    pub(crate) fn create(&self, name: &str) -> String {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .expect("connect to the postgres database");
        // The name is the test's own identifier, not client data.
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE");
        self.url(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGTERM to the postmaster by its PID: "smart" shutdown waits for clients, which are
        // gone by now; then SIGKILL if it lingers.
        let pid = self.pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let start = Instant::now();
        while proc.exists() && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if proc.exists() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Every behaviour the SQLite unit tests check, on PostgreSQL, each in a fresh database;
/// `two_recorders` is two servers' writers sharing one PostgreSQL.
#[test]
fn postgres_backend_behaviour() {
    let pg = Postgres::start();
    type Case = (&'static str, fn(&str));
    let cases: [Case; 11] = [
        ("migrations_idempotent", suite::migrations_idempotent),
        ("leases_persist", suite::leases_persist),
        ("batching", suite::batching),
        ("drop_and_count", suite::drop_and_count),
        ("grouping_and_queries", suite::grouping_and_queries),
        ("retention", suite::retention),
        ("registry_crud", suite::registry_crud),
        ("boot_once", suite::boot_once),
        ("file_boot_once", suite::file_boot_once),
        ("hostile_text", suite::hostile_text),
        ("two_recorders", suite::two_recorders),
    ];
    for (name, case) in cases {
        let url = pg.create(name);
        eprintln!("postgres: {name}");
        case(&url);
    }
}

/// The child side of `sqlite_survives_kill_9`: writes batches forever (bounded), printing the
/// number of each batch once it is committed.
const CRASH_CHILD: &str = "ZPXE_DB_CRASH_CHILD";
const PER_BATCH: u32 = 50;

fn crash_child(path: &str) {
    let cfg = db::DatabaseConfig {
        url: toml::Spanned::new(0..0, format!("sqlite://{path}")),
        ..db::DatabaseConfig::default()
    };
    let database = db::Database::open(&cfg).expect("open");
    let rec = database.recorder();
    let t = db::now_ms();
    let start = Instant::now();
    for batch in 0..100_000u32 {
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
        for i in 0..PER_BATCH {
            for e in suite::boot_events(batch * PER_BATCH + i, t) {
                rec.record(e);
            }
        }
        assert!(rec.flush(Duration::from_secs(30)), "flush");
        println!("committed {batch}");
    }
}

/// kill -9 while a process writes through SQLite: the file reopens clean and every batch
/// reported committed is there, whole.
#[test]
fn sqlite_survives_kill_9() {
    if let Ok(path) = std::env::var(CRASH_CHILD) {
        crash_child(&path);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("zpxe.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "db::sqlite_survives_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut last: Option<u32> = None;
    let start = Instant::now();
    while last.is_none_or(|n| n < 10) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the writer stalled"
        );
        let Some(Ok(line)) = lines.next() else {
            panic!("the writer ended early");
        };
        if let Some(n) = line.strip_prefix("committed ") {
            last = n.trim().parse().ok();
        }
    }
    // SIGKILL by PID while it keeps writing.
    child.kill().expect("kill -9");
    let _ = child.wait();
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("committed ") {
            last = n.trim().parse().ok().or(last);
        }
    }
    let last = last.expect("a committed batch");

    let url = format!("sqlite://{}", path.display());
    let mut conn = db::connect(&url).expect("reopen after kill -9");
    conn.check().expect("integrity_check after kill -9");
    let database = db::Database::with_backends(
        conn,
        db::connect(&url).expect("reader"),
        16,
        suite::test_writer(10, 10),
    )
    .expect("database");
    database.check().expect("integrity_check");
    let committed = (last + 1) * PER_BATCH;
    let page = database.clients(&ClientQuery::default()).expect("clients");
    assert!(
        page.total >= u64::from(committed),
        "{} clients after kill -9, {committed} committed",
        page.total
    );
    for n in [0, committed / 2, committed - 1] {
        let boots = database.boots_of(suite::mac(n), 5).expect("boots");
        assert_eq!(boots.len(), 1, "client {n}");
        assert_eq!(boots[0].events.len(), 9, "client {n}: a whole timeline");
        assert_eq!(boots[0].boot.stage, "loaded");
    }
    eprintln!(
        "kill -9 after batch {last}: {} clients stored, {committed} reported committed",
        page.total
    );
}
