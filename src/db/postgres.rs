//! The shared backend: PostgreSQL, for several zpxe servers with one inventory and one machine
//! registry. Each server keeps its data path to itself; only the writer thread and the API's
//! connection talk to the database.
//!
//! Statements are prepared once per connection and kept; a lost connection is opened again at
//! the next transaction (the writer retries a failed batch).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use ::postgres::types::ToSql;
use ::postgres::{Client, Config, NoTls, Statement, Transaction};
use anyhow::{Context, Result, bail};

use super::{Backend, Row, Sql, Value};

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/postgres/0001_init.sql")),
    (2, include_str!("migrations/postgres/0002_leases.sql")),
    (
        3,
        include_str!("migrations/postgres/0003_file_deployed.sql"),
    ),
];

/// The advisory lock that serializes migrations between servers starting at once ("zpxe" in
/// ASCII).
const MIGRATION_LOCK: i64 = 0x7a70_7865;

/// How long a connection attempt may take when the URL names no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct PgBackend {
    config: Config,
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PgBackend {
    pub(crate) fn connect(url: &str) -> Result<Self> {
        let mut config = Config::from_str(url).context("parsing the PostgreSQL URL")?;
        // An unreachable server must not hold the writer for the system's TCP timeout (the
        // queue would fill meanwhile); the URL's connect_timeout wins.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let client = config.connect(NoTls).context("connecting to PostgreSQL")?;
        Ok(Self {
            config,
            client,
            statements: HashMap::new(),
        })
    }

    fn reconnect_if_closed(&mut self) -> Result<()> {
        if self.client.is_closed() {
            self.client = self
                .config
                .connect(NoTls)
                .context("reconnecting to PostgreSQL")?;
            self.statements.clear();
        }
        Ok(())
    }

    fn run(
        &mut self,
        read_only: bool,
        f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>,
    ) -> Result<()> {
        self.reconnect_if_closed()?;
        let mut builder = self.client.build_transaction();
        if read_only {
            builder = builder.read_only(true);
        }
        let mut tx = builder.start()?;
        f(&mut Tx {
            tx: &mut tx,
            statements: &mut self.statements,
        })?;
        tx.commit()?;
        Ok(())
    }
}

struct Tx<'a, 'b> {
    tx: &'a mut Transaction<'b>,
    statements: &'a mut HashMap<String, Statement>,
}

impl Tx<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn params<'a>(values: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    values
        .iter()
        .map(|v| -> &(dyn ToSql + Sync) {
            match v {
                Value::Int(i) => i,
                Value::Text(t) => t,
                Value::Blob(b) => b,
            }
        })
        .collect()
}

struct PgRow<'a>(&'a ::postgres::Row);

impl Row for PgRow<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.0.try_get(i)?)
    }

    fn text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.0.try_get(i)?)
    }

    fn blob(&self, i: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.0.try_get(i)?)
    }
}

impl Sql for Tx<'_, '_> {
    fn exec(&mut self, sql: &str, values: &[Value<'_>]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        Ok(self.tx.execute(&stmt, &params(values))?)
    }

    fn query(
        &mut self,
        sql: &str,
        values: &[Value<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()> {
        let stmt = self.statement(sql)?;
        for row in self.tx.query(&stmt, &params(values))? {
            each(&PgRow(&row))?;
        }
        Ok(())
    }
}

impl Backend for PgBackend {
    fn migrate(&mut self) -> Result<i64> {
        let mut version = 0;
        for (v, sql) in MIGRATIONS {
            let mut tx = self.client.transaction()?;
            // Servers starting together take turns; the second finds the migration applied.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version \
                 (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
            )?;
            let done: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM schema_version WHERE version = $1",
                    &[v],
                )?
                .try_get(0)?;
            if done == 0 {
                tx.batch_execute(sql)
                    .with_context(|| format!("PostgreSQL migration {v}"))?;
                tx.execute(
                    "INSERT INTO schema_version (version, applied) VALUES ($1, $2)",
                    &[v, &super::now_ms()],
                )?;
            }
            tx.commit()?;
            version = *v;
        }
        Ok(version)
    }

    fn transaction(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()> {
        self.run(false, f)
    }

    fn read(&mut self, f: &mut dyn FnMut(&mut dyn Sql) -> Result<()>) -> Result<()> {
        self.run(true, f)
    }

    fn check(&mut self) -> Result<()> {
        self.reconnect_if_closed()?;
        let one: i32 = self.client.query_one("SELECT 1", &[])?.try_get(0)?;
        if one != 1 {
            bail!("PostgreSQL answered {one} to SELECT 1");
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
