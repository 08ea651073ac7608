//! The embedded backend: one SQLite file in WAL mode.
//!
//! WAL with `synchronous = NORMAL`: a commit is in the log before it returns, so a killed
//! process (kill -9) loses nothing committed; only a power cut can take the last transactions
//! (the log is synced at checkpoints). Readers never block the writer and the writer never
//! blocks readers; the writers (the timeline writer, the DHCP server's lease writer and the
//! registry API) wait for each other up to 10 s, retrying often ([`busy_delay`]).

use std::path::Path;
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
