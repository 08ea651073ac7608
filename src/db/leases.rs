//! The DHCP server's leases (`dhcp.mode = "server"`), in the `leases` table of the same
//! database as the boot timelines (schema 2), on a connection and a thread of their own.
//!
//! The event loop never waits for the disk: it hands each commit (the lease changes one
//! REQUEST, RELEASE or DECLINE made) to [`LeaseStore::submit`], a `try_send` into a bounded
//! queue, and the writer thread writes everything queued in one transaction, then reports each
//! commit's sequence number back and wakes the loop. The engine sends an ACK only after its
//! commit is reported written, so a crash loses at most ACKs nobody received; and a
//! transaction is all or nothing, so no half-written lease survives one.
//!
//! Times are stored as milliseconds since the Unix epoch (`expires`), so a restart knows how
//! much of each lease is left.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use zpxe_engine::dhcp::MacAddr;
use zpxe_engine::dhcp::leases::{ClientKey, LeaseRecord, LeaseState};

use super::{Backend, Value, now_ms};

/// Commits queued for the writer; beyond this `submit` refuses (the REQUEST's ACK is dropped
/// and the client retransmits). The engine holds at most 1,024 unconfirmed commits anyway.
const QUEUE: usize = 2048;
/// Commits written in one transaction at most.
const BATCH: usize = 512;
const WRITE_ATTEMPTS: u32 = 3;

/// One commit as the writer gets it: absolute expiry times already computed.
#[derive(Debug)]
struct Job {
    seq: u64,
    rows: Vec<Row>,
}

#[derive(Debug)]
struct Row {
    ip: Ipv4Addr,
    state: LeaseState,
    client: Option<Vec<u8>>,
    mac: MacAddr,
    expires_ms: i64,
}

/// Written (or failed) commits waiting for the event loop, and its waker.
#[derive(Debug, Default)]
struct Done {
    results: Vec<(u64, bool)>,
    waker: Option<Waker>,
}

/// The event loop's end of the lease writer.
#[derive(Debug)]
pub struct LeaseStore {
    tx: Option<SyncSender<Job>>,
    done: Arc<Mutex<Done>>,
    thread: Option<JoinHandle<()>>,
    /// Stopped after the writer, so its last checkpoint has every commit.
    checkpointer: Option<super::Checkpointer>,
}

/// Reads every stored lease. Blocking: call before the event loops start.
pub fn load(backend: &mut dyn Backend) -> Result<Vec<LeaseRecord>> {
    let now = now_ms();
    let mut out = Vec::new();
    backend.read(&mut |sql| {
        out.clear();
        sql.query(
            "SELECT ip, state, client_id, mac, expires FROM leases",
            &[],
            &mut |r| {
                let ip = r.int(0)?.context("lease without an address")?;
                let ip = Ipv4Addr::from(u32::try_from(ip).context("lease address out of range")?);
                let state = r.text(1)?.unwrap_or_default();
                let Some(state) = LeaseState::parse(&state) else {
                    tracing::warn!(%ip, state, "skipping a stored lease in an unknown state");
                    return Ok(());
                };
                let client = r.blob(2)?.and_then(|b| ClientKey::from_bytes(&b));
                let mac = r.blob(3)?.unwrap_or_default();
                let Ok(mac) = <[u8; 6]>::try_from(mac.as_slice()) else {
                    tracing::warn!(%ip, "skipping a stored lease without a MAC");
                    return Ok(());
                };
                let expires = r.int(4)?.unwrap_or(0);
                let left = u64::try_from(expires.saturating_sub(now)).unwrap_or(0);
                out.push(LeaseRecord {
                    ip,
                    state,
                    client,
                    mac: MacAddr(mac),
                    remaining: Duration::from_millis(left),
                });
                Ok(())
            },
        )
    })?;
    Ok(out)
}

/// `records` as rows, their expiry times counted from now.
fn rows(records: &[LeaseRecord]) -> Vec<Row> {
    let wall = now_ms();
    records
        .iter()
        .map(|r| Row {
            ip: r.ip,
            state: r.state,
            client: r.client.as_ref().map(|c| c.as_bytes().to_vec()),
            mac: r.mac,
            expires_ms: wall
                .saturating_add(i64::try_from(r.remaining.as_millis()).unwrap_or(i64::MAX)),
        })
        .collect()
}

/// Opens the lease table at [`super::leases_url`] and reads it. Blocking: before the event
/// loops serve.
///
/// SQLite leases written before they had a file of their own are in the database's `leases`
/// table: when the lease file has none, they are moved over once (written there, then deleted
/// from the database), so an upgrade keeps every client's address.
pub fn open(url: &str) -> Result<(LeaseFile, Vec<LeaseRecord>)> {
    let leases_url = super::leases_url(url)?;
    // SQLite: a file of its own, with its own checkpoints (the database's checkpointer serves
    // only its file). PostgreSQL: the shared database.
    let own_file = leases_url != url;
    let mut backend = super::connect_served(&leases_url)?;
    let checkpointer = if own_file {
        super::checkpointer_for(&leases_url)?
    } else {
        None
    };
    let mut stored = load(backend.as_mut())?;
    if stored.is_empty() && own_file {
        let mut shared = super::connect_served(url)?;
        let old = load(shared.as_mut())?;
        if !old.is_empty() {
            let job = Job {
                seq: 0,
                rows: rows(&old),
            };
            if !write(backend.as_mut(), std::slice::from_ref(&job)) {
                anyhow::bail!("moving {} leases to {leases_url} failed", old.len());
            }
            shared.transaction(&mut |sql| sql.exec("DELETE FROM leases", &[]).map(|_| ()))?;
            tracing::info!(
                leases = old.len(),
                from = url,
                to = %leases_url,
                "DHCP server: leases moved to a file of their own"
            );
            stored = load(backend.as_mut())?;
        }
    }
    Ok((
        LeaseFile {
            backend,
            checkpointer,
        },
        stored,
    ))
}

/// The lease table's connection from [`open`], for [`LeaseStore::spawn`], with the SQLite
/// lease file's checkpointer.
pub struct LeaseFile {
    backend: Box<dyn Backend>,
    checkpointer: Option<super::Checkpointer>,
}

impl std::fmt::Debug for LeaseFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseFile")
            .field("backend", &self.backend.kind())
            .field("checkpointer", &self.checkpointer)
            .finish()
    }
}

impl From<Box<dyn Backend>> for LeaseFile {
    /// A connection whose commits checkpoint by themselves (`db::connect`), or one on a file
    /// another checkpointer serves.
    fn from(backend: Box<dyn Backend>) -> Self {
        Self {
            backend,
            checkpointer: None,
        }
    }
}

impl LeaseStore {
    /// Starts the writer on `file` (a connection of its own).
    pub fn spawn(file: impl Into<LeaseFile>) -> Result<Self> {
        let LeaseFile {
            backend,
            checkpointer,
        } = file.into();
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let done = Arc::new(Mutex::new(Done::default()));
        let thread = std::thread::Builder::new()
            .name("zpxe-lease-writer".into())
            .spawn({
                let done = Arc::clone(&done);
                move || run(backend, rx, done)
            })
            .context("starting the lease writer")?;
        Ok(Self {
            tx: Some(tx),
            done,
            thread: Some(thread),
            checkpointer,
        })
    }

    /// Queues `records` (changed at `now`, this process's monotonic clock) as commit `seq`.
    /// Never blocks: `false` when the queue is full or the writer is gone.
    pub fn submit(&self, seq: u64, records: &[LeaseRecord]) -> bool {
        let Some(tx) = &self.tx else { return false };
        let rows = rows(records);
        match tx.try_send(Job { seq, rows }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The commits written (`true`) or failed since the last call.
    pub fn take_done(&self) -> Vec<(u64, bool)> {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut done.results)
    }

    /// Waits until a commit is reported. Wakes from the writer thread, and only then.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            if done.results.is_empty() {
                done.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Writes what is queued and stops the writer.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the lease writer panicked");
        }
        drop(self.checkpointer.take());
    }
}

impl Drop for LeaseStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(mut backend: Box<dyn Backend>, rx: Receiver<Job>, done: Arc<Mutex<Done>>) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ok = write(backend.as_mut(), &batch);
        let waker = {
            let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
            d.results.extend(batch.iter().map(|j| (j.seq, ok)));
            d.waker.take()
        };
        batch.clear();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The rows of `batch` with one per address: the last change of each (commits are queued in
/// the order the engine made them), so a batch writes each lease once however often it moved.
fn coalesced(batch: &[Job]) -> Vec<&Row> {
    let mut last: HashMap<Ipv4Addr, usize> = HashMap::new();
    let rows: Vec<&Row> = batch.iter().flat_map(|j| &j.rows).collect();
    for (i, row) in rows.iter().enumerate() {
        last.insert(row.ip, i);
    }
    rows.iter()
        .enumerate()
        .filter(|(i, row)| last.get(&row.ip) == Some(i))
        .map(|(_, row)| *row)
        .collect()
}

/// One transaction for the whole batch, retried a few times; `false` when it never committed.
fn write(backend: &mut dyn Backend, batch: &[Job]) -> bool {
    let rows = coalesced(batch);
    for attempt in 1..=WRITE_ATTEMPTS {
        let now = now_ms();
        let r = backend.transaction(&mut |sql| {
            for row in &rows {
                sql.exec(
                    "INSERT INTO leases (ip, state, client_id, mac, expires, updated) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (ip) DO UPDATE SET state = excluded.state, \
                     client_id = excluded.client_id, mac = excluded.mac, \
                     expires = excluded.expires, updated = excluded.updated",
                    &[
                        Value::Int(Some(i64::from(u32::from(row.ip)))),
                        Value::Text(Some(row.state.as_str())),
                        Value::Blob(row.client.as_deref()),
                        Value::Blob(Some(&row.mac.0)),
                        Value::Int(Some(row.expires_ms)),
                        Value::Int(Some(now)),
                    ],
                )?;
            }
            Ok(())
        });
        match r {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, attempt, commits = batch.len(), "writing leases failed");
                if attempt < WRITE_ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ip: u8, state: LeaseState, expires_ms: i64) -> Row {
        Row {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            state,
            client: Some(vec![1, 2, 3]),
            mac: MacAddr([2, 0, 0, 0, 0, ip]),
            expires_ms,
        }
    }

    /// Several commits of one batch that touch one address write it once, as the last left it.
    #[test]
    fn a_batch_writes_each_address_once() {
        let batch = vec![
            Job {
                seq: 1,
                rows: vec![
                    row(5, LeaseState::Bound, 100),
                    row(6, LeaseState::Bound, 100),
                ],
            },
            Job {
                seq: 2,
                rows: vec![row(5, LeaseState::Bound, 200)],
            },
            Job {
                seq: 3,
                rows: vec![
                    row(6, LeaseState::Released, 0),
                    row(7, LeaseState::Bound, 300),
                ],
            },
        ];
        let rows = coalesced(&batch);
        let got: Vec<(u8, LeaseState, i64)> = rows
            .iter()
            .map(|r| (r.ip.octets()[3], r.state, r.expires_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, LeaseState::Bound, 200),
                (6, LeaseState::Released, 0),
                (7, LeaseState::Bound, 300)
            ]
        );
    }
}
