//! The embedded backend: one SQLite file in WAL mode.
//!
//! WAL with `synchronous = NORMAL`: a commit is in the log before it returns, so a killed
//! process (kill -9) loses nothing committed; only a power cut can take the last transactions
//! (the log is synced at checkpoints). Readers never block the writer and the writer never
//! blocks readers; the writers (the timeline writer, the DHCP server's lease writer and the
//! registry API) wait for each other up to 10 s, retrying often ([`busy_delay`]).
//!
//! A serving process checkpoints on a thread of its own ([`Checkpointer`]): its connections
//! ([`SqliteBackend::open_served`]) never do. SQLite's default runs a checkpoint inside the
//! commit that grows the log past 1,000 pages, and a checkpoint syncs the log and the file:
//! in DHCP server mode an ACK leaves only once its lease is committed, so every such commit
//! held a batch of ACKs for the length of two fsyncs.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, TransactionBehavior};

use super::{Backend, Row, Sql, Value};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/sqlite/0001_init.sql")),
    (2, include_str!("migrations/sqlite/0002_leases.sql")),
    (3, include_str!("migrations/sqlite/0003_file_deployed.sql")),
];

/// How long a writer waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a writer sleeps before its `n`th retry for another writer's lock (n from 0), or
/// `None` once the waits add up to [`BUSY_TIMEOUT`]. SQLite's own handler (`busy_timeout`)
/// backs off 1, 2, 5, 10, 15, 20, 25 ms...: a lock held for 4 ms by the timeline writer's
/// batch cost the lease writer 8 ms or more, and every ACK waiting on that commit with it (in
/// DHCP server mode an ACK leaves only once its lease is written): `zpxe-bench dora` showed
/// p99 31 ms at 10,000 exchanges/s with p50 0.3 ms. Here the first 10 ms are retried every
/// 100 us, then every millisecond.
fn busy_delay(n: u32) -> Option<Duration> {
    const FAST: u32 = 100;
    const FAST_STEP: Duration = Duration::from_micros(100);
    const SLOW_STEP: Duration = Duration::from_millis(1);
    let fast_total = FAST_STEP * FAST;
    let slow =
        u32::try_from(BUSY_TIMEOUT.saturating_sub(fast_total).as_micros() / SLOW_STEP.as_micros())
            .unwrap_or(u32::MAX);
    match n {
        n if n < FAST => Some(FAST_STEP),
        n if n - FAST < slow => Some(SLOW_STEP),
        _ => None,
    }
}

/// [`busy_delay`] as SQLite's busy handler: sleeps and retries, or gives up (SQLITE_BUSY).
fn busy_handler(n: i32) -> bool {
    match busy_delay(u32::try_from(n).unwrap_or(u32::MAX)) {
        Some(d) => {
            std::thread::sleep(d);
            true
        }
        None => false,
    }
}

pub(crate) struct SqliteBackend {
    conn: Connection,
}

impl SqliteBackend {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_handler(Some(busy_handler))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("{}: SQLite refused WAL mode (got {mode})", path.display());
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")?;
        Ok(Self { conn })
    }

    /// A connection of a serving process: its commits never checkpoint, the process's
    /// [`Checkpointer`] does. Only while one runs on `path` in this process; without it the
    /// log grows until the last connection closes (SQLite checkpoints then).
    pub(crate) fn open_served(path: &Path) -> Result<Self> {
        let backend = Self::open(path)?;
        backend.conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
            WAL_KEEP_BYTES
        ))?;
        Ok(backend)
    }
}

/// How often the checkpointer copies the log into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// Log pages beyond which a checkpoint that writers keep from finishing (PASSIVE copies only
/// what was in the log when it started) waits for them instead (RESTART), so the log cannot
/// grow without bound under a steady load: 16,384 pages are 64 MiB.
const WAL_RESTART_PAGES: i64 = 16_384;
/// What a log file is cut back to after a checkpoint empties it.
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// The thread that checkpoints a serving process's SQLite file, so no commit on the data
/// path's writers ever waits for an fsync. Stopping it (drop) runs a last, full checkpoint.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn spawn(path: &Path) -> Result<Self> {
        // Its own connection, opened here so a bad path fails the caller.
        let conn = SqliteBackend::open_served(path)?;
        let path: PathBuf = path.to_owned();
        let (stop, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("zpxe-db-checkpoint".into())
            .spawn(move || run_checkpointer(&conn.conn, &path, &rx))
            .context("starting the SQLite checkpointer")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the SQLite checkpointer panicked");
        }
    }
}

/// The checkpointer's thread: a PASSIVE checkpoint every [`CHECKPOINT_EVERY`] (a RESTART
/// past [`WAL_RESTART_PAGES`]) until told to stop, then a TRUNCATE. A failure is logged when
/// it starts and when it ends, not twice a second while it lasts (a full disk).
fn run_checkpointer(conn: &Connection, path: &Path, stop: &Receiver<()>) {
    zpxe_platform::thread::lower_priority();
    let mut failing = false;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let r = match checkpoint(conn, "PASSIVE") {
            Ok((_, log, _)) if log > WAL_RESTART_PAGES => checkpoint(conn, "RESTART"),
            other => other,
        };
        match r {
            Err(e) if !failing => {
                tracing::warn!(path = %path.display(), error = %e, "SQLite checkpoints fail");
                failing = true;
            }
            Ok(_) if failing => {
                tracing::info!(path = %path.display(), "SQLite checkpoints work again");
                failing = false;
            }
            _ => {}
        }
    }
    if let Err(e) = checkpoint(conn, "TRUNCATE") {
        tracing::debug!(path = %path.display(), error = %e, "SQLite checkpoint at stop");
    }
}

/// `PRAGMA wal_checkpoint(mode)`: (busy, pages in the log, pages copied to the file).
fn checkpoint(conn: &Connection, mode: &str) -> Result<(i64, i64, i64)> {
    Ok(
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?,
    )
}

/// `$N` (the SQL both backends share) to SQLite's `?N`. The shared SQL has no `$` elsewhere.
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

struct Param<'a>(&'a Value<'a>);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self.0 {
            Value::Int(Some(v)) => ValueRef::Integer(v),
            Value::Text(Some(s)) => ValueRef::Text(s.as_bytes()),
            Value::Blob(Some(b)) => ValueRef::Blob(b),
            Value::Int(None) | Value::Text(None) | Value::Blob(None) => ValueRef::Null,
        }))
    }
}

struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl Row for SqliteRow<'_, '_> {
    fn int(&self, i: usize) -> Result<Option<i64>> {
        Ok(match self.0.get_ref(i)? {
            ValueRef::Null => None,
            ValueRef::Integer(v) => Some(v),
            other => bail!(
                "column {i}: expected an integer, found {:?}",
                other.data_type()
            ),
        })
    }

    fn text(&self, i: usize) -> Result<Option<String>> {
        Ok(match self.0.get_ref(i)? {
            ValueRef::Null => None,
            ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            other => bail!("column {i}: expected text, found {:?}", other.data_type()),
        })
    }

    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(match self.0.get_ref(i)? {
            ValueRef::Null => None,
            ValueRef::Blob(b) => Some(b.to_vec()),
            other => bail!("column {i}: expected a blob, found {:?}", other.data_type()),
        })
    }
}

struct Tx<'a>(&'a rusqlite::Transaction<'a>);

impl Sql for Tx<'_> {
    fn exec(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64> {
        let mut stmt = self.0.prepare_cached(&numbered(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter().map(Param)))?;
        Ok(n as u64)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self.0.prepare_cached(&numbered(sql))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter().map(Param)))?;
        while let Some(r) = rows.next()? {
            each(&SqliteRow(r))?;
        }
        Ok(())
    }
}

impl Backend for SqliteBackend {
    fn migrate(&mut self) -> Result<i64> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_version \
             (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)",
        )?;
        let mut version = 0;
        for (v, sql) in MIGRATIONS {
            // IMMEDIATE takes the write lock before reading the version, so two processes
            // opening one new file apply each migration once.
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done: i64 = tx.query_row(
                "SELECT COUNT(*) FROM schema_version WHERE version = ?1",
                [v],
                |r| r.get(0),
            )?;
            if done == 0 {
                tx.execute_batch(sql)
                    .with_context(|| format!("SQLite migration {v}"))?;
                tx.execute(
                    "INSERT INTO schema_version (version, applied) VALUES (?1, ?2)",
                    [*v, super::now_ms()],
                )?;
            }
            tx.commit()?;
            version = *v;
        }
        Ok(version)
    }

    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        f(&mut Tx(&tx))?;
        tx.commit()?;
        Ok(())
    }

    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()> {
        // DEFERRED: in WAL mode a transaction that only reads sees one snapshot and never
        // waits for the writer.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Deferred)?;
        f(&mut Tx(&tx))?;
        tx.commit()?;
        Ok(())
    }

    fn check(&mut self) -> Result<()> {
        let result: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        if result != "ok" {
            bail!("SQLite integrity_check: {result}");
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// 3,000 commits of a 4 KB row each through `backend` (a page each, 12 MB in all), far
    /// past SQLite's automatic checkpoint at 1,000 log pages.
    fn fill(backend: &SqliteBackend) {
        backend
            .conn
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .expect("create");
        for i in 0..3_000 {
            backend
                .conn
                .execute("INSERT INTO t VALUES (?1, zeroblob(4000))", [i])
                .expect("insert");
        }
    }

    /// A served connection's commits leave the log to the checkpointer, which copies it into
    /// the file, and empties it when it stops.
    #[test]
    fn served_commits_never_checkpoint_and_the_checkpointer_does() {
        let dir = tempfile::tempdir().expect("tmp");
        // The default, for contrast: the commits checkpoint, so the log stays near 1,000 pages.
        let plain_path = dir.path().join("plain.db");
        let plain = SqliteBackend::open(&plain_path).expect("open");
        fill(&plain);
        let plain_wal = size(&dir.path().join("plain.db-wal"));
        assert!(plain_wal < 8 << 20, "plain log {plain_wal} bytes");
        assert!(
            size(&plain_path) > 8 << 20,
            "the plain commits checkpointed"
        );

        let path = dir.path().join("served.db");
        let wal = dir.path().join("served.db-wal");
        let writer = SqliteBackend::open_served(&path).expect("open");
        fill(&writer);
        assert!(size(&wal) > 12 << 20, "served log {} bytes", size(&wal));
        assert!(size(&path) < 1 << 20, "a served commit checkpointed");

        let checkpointer = Checkpointer::spawn(&path).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size(&path) < 10 << 20 {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(checkpointer);
        // The last checkpoint (TRUNCATE) empties the log, and the rows are all there.
        assert_eq!(size(&wal), 0);
        let n: i64 = writer
            .conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 3_000);
    }

    #[test]
    fn a_busy_writer_retries_often_and_gives_up_at_the_timeout() {
        // The first 10 ms are retried every 100 us (SQLite's own handler slept 1, 2, 5, 10 ms).
        let first: Duration = (0..100).map(|n| busy_delay(n).expect("retry")).sum();
        assert_eq!(first, Duration::from_millis(10));
        assert_eq!(busy_delay(100), Some(Duration::from_millis(1)));
        // Every wait together is the timeout, then SQLITE_BUSY.
        let all: Duration = (0..).map_while(busy_delay).sum();
        assert_eq!(all, BUSY_TIMEOUT);
        assert_eq!(busy_delay(u32::MAX), None);
    }
}
