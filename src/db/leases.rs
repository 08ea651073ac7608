//! The DHCP server's leases (`dhcp.mode = "server"`), in the `leases` table of the same
//! database as the boot timelines (schema 2), on a connection and a thread of their own.
//!
//! The event loop never waits for the disk. A commit is the lease changes one REQUEST,
//! RELEASE or DECLINE made, and the engine sends an ACK only once its commit is durable, so a
//! crash loses at most ACKs nobody received:
//! - SQLite: the loop appends it to the lease journal (src/db/journal.rs) and ACKs when that
//!   write completes, then hands it to [`LeaseStore::submit_journaled`]. The writer thread
//!   writes what is queued in one transaction, retries what failed (the journal keeps it
//!   meanwhile), and empties a journal file the loop has left once all its commits are in.
//!   [`open`] applies whatever the journal holds at start. At most [`OUTSTANDING`] commits
//!   wait for the lease file; past that the loop takes no more.
//! - PostgreSQL, whose leases several servers share: [`LeaseStore::submit`], a `try_send` into
//!   a bounded queue; the writer writes everything queued in one transaction, then reports
//!   each commit's sequence number back and wakes the loop, which sends the ACKs then.
//!
//! A transaction is all or nothing and a torn journal frame is ignored, so no half-written
//! lease survives a crash.
//!
//! Times are stored as milliseconds since the Unix epoch (`expires`), so a restart knows how
//! much of each lease is left.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
const QUEUE: usize = 4096;
/// Commits written in one transaction at most.
const BATCH: usize = 512;
const WRITE_ATTEMPTS: u32 = 3;
/// Journal mode: how long the writer lets commits gather after the first before it writes.
const GATHER_NAP: Duration = Duration::from_millis(10);

/// One commit as the writer gets it: absolute expiry times already computed.
#[derive(Debug)]
struct Job {
    seq: u64,
    rows: Vec<Row>,
}

/// One lease as stored: its expiry as an absolute time.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) ip: Ipv4Addr,
    pub(crate) state: LeaseState,
    pub(crate) client: Option<Vec<u8>>,
    pub(crate) mac: MacAddr,
    pub(crate) expires_ms: i64,
}

/// What the event loop sends the writer.
#[derive(Debug)]
enum Msg {
    Job(Job),
    /// Journal file `0` or `1` holds no commit after those already sent: empty it once they
    /// are all in the lease file.
    Seal(usize),
}

/// Journal mode: commits handed to the writer and not yet in the lease file before the loop
/// waits ([`LeaseStore::until_admits`]) to journal more, so the loop runs at most this far
/// ahead of the lease file. With the engine's 1,024 unconfirmed commits on top, below
/// [`QUEUE`], so a hand-over never finds the queue full.
const OUTSTANDING: usize = 2048;

/// The journal's side of the writer (SQLite leases): the files it empties, and what the loop
/// reads to know when it may swap files and take more commits.
#[derive(Debug, Clone)]
struct JournalLink {
    paths: [PathBuf; 2],
    /// Per file: emptied by the writer and not written since.
    clean: Arc<[AtomicBool; 2]>,
    outstanding: Arc<AtomicUsize>,
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
    tx: Option<SyncSender<Msg>>,
    /// SQLite: the journal the event loop writes (src/db/journal.rs); `None` with PostgreSQL,
    /// whose servers share the leases and so ACK only what the shared database committed.
    journal: Option<JournalLink>,
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
pub(crate) fn rows(records: &[LeaseRecord]) -> Vec<Row> {
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
    let journal = match super::DbUrl::parse(&leases_url).map_err(|e| anyhow::anyhow!(e))? {
        super::DbUrl::Sqlite(path) => Some(super::journal::paths(&path)),
        super::DbUrl::Postgres(_) => None,
    };
    if let Some(paths) = &journal {
        replay(backend.as_mut(), paths, &leases_url)?;
    }
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
            journal,
        },
        stored,
    ))
}

/// Applies the journal's commits (those of a run that stopped before its writer had them all
/// in the lease file) in the order they were made, in one transaction, then empties both
/// files. Writing a commit again is harmless: each row sets its address's lease.
fn replay(backend: &mut dyn Backend, paths: &[PathBuf; 2], leases_url: &str) -> Result<()> {
    let commits = super::journal::read(paths)?;
    if !commits.is_empty() {
        let jobs: Vec<Job> = commits
            .into_iter()
            .map(|(seq, rows)| Job { seq, rows })
            .collect();
        if !write(backend, &jobs) {
            anyhow::bail!(
                "applying {} journal commits to {leases_url} failed (see the warnings above); \
                 the journal is kept",
                jobs.len()
            );
        }
        tracing::info!(
            commits = jobs.len(),
            "DHCP server: leases from the journal applied to the lease file"
        );
    }
    for path in paths {
        super::journal::empty(path)
            .with_context(|| format!("emptying the lease journal {}", path.display()))?;
    }
    Ok(())
}

/// The lease table's connection from [`open`], for [`LeaseStore::spawn`], with the SQLite
/// lease file's checkpointer.
pub struct LeaseFile {
    backend: Box<dyn Backend>,
    checkpointer: Option<super::Checkpointer>,
    /// SQLite: the journal files, replayed and emptied by [`open`].
    journal: Option<[PathBuf; 2]>,
}

impl LeaseFile {
    /// The journal files the event loop appends to, when the leases have them (SQLite).
    pub fn journal_paths(&self) -> Option<&[PathBuf; 2]> {
        self.journal.as_ref()
    }
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
            journal: None,
        }
    }
}

impl LeaseStore {
    /// Starts the writer on `file` (a connection of its own).
    pub fn spawn(file: impl Into<LeaseFile>) -> Result<Self> {
        let LeaseFile {
            backend,
            checkpointer,
            journal,
        } = file.into();
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let done = Arc::new(Mutex::new(Done::default()));
        // File 0 is written first; file 1 was emptied by `open`.
        let journal = journal.map(|paths| JournalLink {
            paths,
            clean: Arc::new([AtomicBool::new(false), AtomicBool::new(true)]),
            outstanding: Arc::new(AtomicUsize::new(0)),
        });
        let thread = std::thread::Builder::new()
            .name("zpxe-lease-writer".into())
            .spawn({
                let done = Arc::clone(&done);
                let journal = journal.clone();
                move || run(backend, rx, done, journal)
            })
            .context("starting the lease writer")?;
        Ok(Self {
            tx: Some(tx),
            journal,
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
        match tx.try_send(Msg::Job(Job { seq, rows })) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Whether the event loop journals its commits (and ACKs once the journal has them).
    pub fn journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Journal mode: whether the writer can take one more commit (see [`OUTSTANDING`]).
    pub fn admits(&self) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.outstanding.load(Ordering::Acquire) < OUTSTANDING)
    }

    /// Journal mode: waits until [`Self::admits`]; the writer wakes it as it catches up.
    pub async fn until_admits(&self) {
        let Some(j) = &self.journal else { return };
        std::future::poll_fn(|cx| {
            if j.outstanding.load(Ordering::Acquire) < OUTSTANDING {
                return Poll::Ready(());
            }
            self.done.lock().unwrap_or_else(|p| p.into_inner()).waker = Some(cx.waker().clone());
            // Checked again: the writer may have caught up before the waker was in place.
            if j.outstanding.load(Ordering::Acquire) < OUTSTANDING {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Journal mode: hands a commit the journal holds to the writer, for the lease file.
    /// `false` when the writer is gone (the journal keeps the commit for the next start).
    pub(crate) fn submit_journaled(&self, seq: u64, rows: Vec<Row>) -> bool {
        let (Some(tx), Some(j)) = (&self.tx, &self.journal) else {
            return false;
        };
        j.outstanding.fetch_add(1, Ordering::AcqRel);
        if tx.try_send(Msg::Job(Job { seq, rows })).is_ok() {
            true
        } else {
            j.outstanding.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Journal mode: whether journal file `file` is empty and unwritten since.
    pub fn journal_clean(&self, file: usize) -> bool {
        self.journal
            .as_ref()
            .is_some_and(|j| j.clean[file].load(Ordering::Acquire))
    }

    /// Journal mode: the loop leaves file `active` for the empty file `next`: `active` is
    /// sealed (the writer empties it once every commit sent so far is in the lease file).
    /// `false`, and nothing changed, when the writer cannot be told.
    pub fn swap_journal(&self, active: usize, next: usize) -> bool {
        let (Some(tx), Some(j)) = (&self.tx, &self.journal) else {
            return false;
        };
        if tx.try_send(Msg::Seal(active)).is_err() {
            return false;
        }
        j.clean[next].store(false, Ordering::Release);
        true
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

fn run(
    mut backend: Box<dyn Backend>,
    rx: Receiver<Msg>,
    done: Arc<Mutex<Done>>,
    journal: Option<JournalLink>,
) {
    // At normal priority even in journal mode: under SCHED_IDLE it fell behind in a
    // closed-loop blast (the loop then waits to admit commits) and perfdhcp at 10,000/s lost
    // 1,300-2,300 exchanges of 50,000 (103 at normal priority).
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    // Journal mode: commits whose write failed, written again with the next batch (the
    // journal holds them meanwhile), and sealed files waiting for every commit before them.
    let mut retry: Vec<Job> = Vec::new();
    let mut seals: Vec<usize> = Vec::new();
    let take = |msg: Msg, batch: &mut Vec<Job>, seals: &mut Vec<usize>| match msg {
        Msg::Job(job) => batch.push(job),
        Msg::Seal(file) => seals.push(file),
    };
    loop {
        let wait = if retry.is_empty() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(200)
        };
        let mut closed = false;
        match rx.recv_timeout(wait) {
            Ok(msg) => take(msg, &mut batch, &mut seals),
            Err(RecvTimeoutError::Timeout) if retry.is_empty() && seals.is_empty() => continue,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        if journal.is_some() && !closed {
            // Nothing waits for the lease file: let a batch gather, so a transaction carries
            // many commits instead of the one or two a paced load brings between wake-ups.
            std::thread::sleep(GATHER_NAP);
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch, &mut seals),
                Err(_) => break,
            }
        }
        let Some(j) = &journal else {
            if closed {
                return;
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
            continue;
        };
        retry.append(&mut batch);
        if !retry.is_empty() && write(backend.as_mut(), &retry) {
            j.outstanding.fetch_sub(retry.len(), Ordering::AcqRel);
            retry.clear();
            let waker = done.lock().unwrap_or_else(|p| p.into_inner()).waker.take();
            if let Some(w) = waker {
                w.wake();
            }
        }
        if retry.is_empty() {
            for file in seals.drain(..) {
                let path = &j.paths[file];
                match super::journal::empty(path) {
                    Ok(()) => j.clean[file].store(true, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "emptying a lease journal file failed; the other keeps growing");
                    }
                }
            }
        }
        if closed {
            if !retry.is_empty() {
                tracing::warn!(
                    commits = retry.len(),
                    "stopping with commits not in the lease file; the journal keeps them for the next start"
                );
            }
            return;
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

    /// Journal mode (SQLite): a commit the loop journaled and handed over reaches the lease
    /// file, and a sealed journal file is emptied once it has; a commit only in the journal (a
    /// crash before the writer had it), after a frame cut short, is applied at the next start,
    /// and both files are empty after it.
    #[test]
    fn the_journal_fills_the_lease_file_and_a_restart_replays_what_it_lacked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("zpxe.db").display());
        let (file, stored) = open(&url).expect("open");
        assert!(stored.is_empty());
        let paths = file.journal_paths().expect("SQLite has a journal").clone();
        let store = LeaseStore::spawn(file).expect("spawn");
        assert!(store.journaled() && store.admits());
        assert!(!store.journal_clean(0) && store.journal_clean(1));

        // The loop journals commit 1, then hands it over.
        let first = vec![row(5, LeaseState::Bound, now_ms() + 600_000)];
        let mut bytes = Vec::new();
        super::super::journal::encode(1, &first, &mut bytes);
        std::fs::write(&paths[0], &bytes).expect("journal");
        assert!(store.submit_journaled(1, first));
        // It moves to file 1: file 0 is emptied once commit 1 is in the lease file.
        assert!(store.swap_journal(0, 1));
        assert!(!store.journal_clean(1));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.journal_clean(0) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.journal_clean(0), "file 0 was not emptied");
        assert_eq!(std::fs::metadata(&paths[0]).expect("meta").len(), 0);

        // Commit 2 is journaled in file 1, and the process dies before handing it over; the
        // last write was cut short.
        let second = vec![
            row(6, LeaseState::Bound, now_ms() + 600_000),
            row(5, LeaseState::Released, now_ms()),
        ];
        let mut bytes = Vec::new();
        super::super::journal::encode(2, &second, &mut bytes);
        let whole = bytes.len();
        super::super::journal::encode(3, &[row(7, LeaseState::Bound, now_ms())], &mut bytes);
        bytes.truncate(whole + 9);
        std::fs::write(&paths[1], &bytes).expect("journal");
        drop(store);

        let (file, mut stored) = open(&url).expect("reopen");
        drop(file);
        stored.sort_by_key(|r| r.ip);
        let got: Vec<(u8, LeaseState)> =
            stored.iter().map(|r| (r.ip.octets()[3], r.state)).collect();
        assert_eq!(got, vec![(5, LeaseState::Released), (6, LeaseState::Bound)]);
        for path in &paths {
            assert_eq!(
                std::fs::metadata(path).expect("meta").len(),
                0,
                "{}",
                path.display()
            );
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
