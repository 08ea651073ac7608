//! The address table of the DHCP server: pools per subnet, one slot per address that has ever
//! been offered, bound, released or declined, and the client each slot belongs to.
//!
//! Memory is bounded by configuration, not by traffic: a slot exists only for an address of a
//! pool (or a reservation), and a client is indexed only while a slot names it, so an attacker
//! sending DISCOVERs from random MACs can hold at most every address of the pool, never more
//! entries than the pool has addresses. Expiry is lazy: every state carries its end, and a slot
//! whose end has passed is free to take; no timer runs.
//!
//! Allocation never scans: each pool has a cursor over its never-used addresses (it only moves
//! forward, so each address is stepped over once: O(1) amortized), the addresses behind it that
//! lost their slot (a withdrawn offer), and an ordered set of the other addresses by the moment
//! each becomes free (`until`), which every change of a slot keeps exact. The earliest entry is
//! free now, or nothing is: O(log n).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ids::MacAddr;
use super::policy::Ipv4Cidr;
use super::wire::DhcpRepr;
use crate::sharded::ShardedMap;

/// The longest client key kept as sent; longer identifiers (option 61 allows 255 bytes) are
/// kept as their first [`KEY_PREFIX`] bytes and a 128-bit hash of the whole.
pub const MAX_CLIENT_KEY: usize = 64;
const KEY_PREFIX: usize = MAX_CLIENT_KEY - 16;
/// Addresses in all pools together (a /12's worth); `DhcpServerConfig::check` refuses more.
pub const MAX_POOL_ADDRESSES: u64 = 1 << 20;

/// Who holds a lease.
//= https://www.rfc-editor.org/rfc/rfc2131#section-4.2
//# DHCP servers use the 'client identifier' option (if present) or the
//# 'chaddr' and 'htype' fields to identify the client
//
// Without option 61 the key is the hardware type and chaddr, `01` and the MAC: the form iPXE
// and most clients put in option 61, so a PXE ROM without it and the iPXE it loads (with it)
// are the same client and keep one address.
//
// Stored once: the slot and the client index share one allocation (an `Arc`), at most
// [`MAX_CLIENT_KEY`] bytes. An identifier longer than that (RFC 4361's DUID-based ones reach
// 135 bytes; none seen in practice passes 30) is kept as its first 48 bytes and an FNV-1a
// 128-bit hash of all of it: stable across versions and restarts, so a stored key still matches.
// The hash is not a secret and need not be: whoever can forge a collision can as well send the
// victim's identifier itself, which goes over the wire in the clear.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(Arc<[u8]>);

impl ClientKey {
    pub fn from_request(request: &DhcpRepr) -> Self {
        match request.options.client_id.as_deref() {
            Some(id) if !id.is_empty() => Self::capped(id),
            _ => Self::from_mac(request.client_mac),
        }
    }

    pub fn from_mac(mac: MacAddr) -> Self {
        let mut key = [1u8; 7];
        key[1..].copy_from_slice(&mac.0);
        Self(Arc::from(&key[..]))
    }

    /// A stored key or an identifier: 1 to 255 bytes, as option 61 allows; longer than
    /// [`MAX_CLIENT_KEY`] is shortened as `from_request` does.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() <= 255).then(|| Self::capped(bytes))
    }

    fn capped(id: &[u8]) -> Self {
        if id.len() <= MAX_CLIENT_KEY {
            return Self(Arc::from(id));
        }
        let mut key = [0u8; MAX_CLIENT_KEY];
        key[..KEY_PREFIX].copy_from_slice(&id[..KEY_PREFIX]);
        key[KEY_PREFIX..].copy_from_slice(&fnv1a_128(id).to_be_bytes());
        Self(Arc::from(&key[..]))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

/// The state of one address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseState {
    /// Offered, held for the client until `until` (not persisted).
    Offered,
    /// Leased until `until`; after that still remembered for the same client.
    Bound,
    /// Given back by the client (RELEASE); free, remembered for the same client.
    Released,
    /// The client found it in use (DECLINE); nobody gets it before `until`.
    Declined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Bound => "bound",
            Self::Released => "released",
            Self::Declined => "declined",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "offered" => Self::Offered,
            "bound" => Self::Bound,
            "released" => Self::Released,
            "declined" => Self::Declined,
            _ => return None,
        })
    }
}

/// One address's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub state: LeaseState,
    /// The client it was offered, leased or released by (none for a declined address).
    pub client: Option<ClientKey>,
    pub mac: MacAddr,
    pub until: Instant,
    /// For a bound slot: the end of this client's lease as last confirmed written (restored
    /// leases count as written). `until` runs ahead of it while a commit is in flight or after
    /// one failed; a reply that writes nothing may promise no more than this.
    pub written: Option<Instant>,
    /// The commit in flight that binds this slot, so a retransmitted REQUEST joins it instead of
    /// making another.
    pub pending: Option<u64>,
}

impl Slot {
    fn new(state: LeaseState, client: Option<ClientKey>, mac: MacAddr, until: Instant) -> Self {
        Self {
            state,
            client,
            mac,
            until,
            written: None,
            pending: None,
        }
    }

    /// Whether `client` may take this address at `now`.
    fn available_to(&self, client: &ClientKey, now: Instant) -> bool {
        match self.state {
            LeaseState::Offered | LeaseState::Bound => {
                self.client.as_ref() == Some(client) || self.until <= now
            }
            LeaseState::Released => true,
            LeaseState::Declined => self.until <= now,
        }
    }

    /// Whether this slot belongs to `client`'s current lease (bound and not expired).
    fn held_by(&self, client: &ClientKey, now: Instant) -> bool {
        self.state == LeaseState::Bound && self.client.as_ref() == Some(client) && self.until > now
    }
}

/// A state change that must be written down before a reply depends on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub ip: Ipv4Addr,
    pub state: LeaseState,
    pub client: Option<ClientKey>,
    pub mac: MacAddr,
    /// Time left at the moment of the change (zero for a released address).
    pub remaining: Duration,
}

/// One pool: the addresses `first..=last` of `subnet`.
#[derive(Clone, Debug)]
pub struct Pool {
    pub subnet: Ipv4Cidr,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// Addresses inside the range never handed out dynamically (routers, DNS servers, this
    /// server).
    pub excluded: Vec<Ipv4Addr>,
    /// Offsets below it have been stepped over: never-used addresses are at or after it.
    cursor: u32,
    /// Addresses behind the cursor without a slot (an offer withdrawn or replaced).
    returned: BTreeSet<Ipv4Addr>,
    /// Every slot of the pool's dynamic addresses, by when it is free (its `until`).
    free: BTreeSet<(Instant, Ipv4Addr)>,
}

impl Pool {
    pub fn new(subnet: Ipv4Cidr, first: Ipv4Addr, last: Ipv4Addr, excluded: Vec<Ipv4Addr>) -> Self {
        Self {
            subnet,
            first,
            last,
            excluded,
            cursor: 0,
            returned: BTreeSet::new(),
            free: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last)
            .saturating_sub(u32::from(self.first))
            .saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        u32::from(self.last) < u32::from(self.first)
    }

    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    /// Whether `ip` may ever be handed out from this pool's range.
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        let host = u32::from(ip) & !u32::from(self.subnet.mask());
        // The network and broadcast addresses of the subnet (/31 and /32 have neither).
        let special = self.subnet.prefix_len < 31 && (host == 0 || ip == self.subnet.broadcast());
        self.in_range(ip) && !special && !self.excluded.contains(&ip)
    }
}

/// Why no address could be chosen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Every address of the pool is leased, offered or declined.
    Exhausted,
}

/// The table: pools, slots, the client index and the reservations.
#[derive(Debug)]
pub struct LeaseTable {
    pools: Vec<Pool>,
    /// Sharded, as is `clients`: both grow with the pool's use, and a plain map's resize at
    /// that size held the loop for milliseconds (src/sharded.rs).
    slots: ShardedMap<Ipv4Addr, Slot>,
    /// A client's current address. Invariant: `clients[k] == ip` implies `slots[ip].client ==
    /// Some(k)`, so this map never has more entries than `slots`; the key shares the slot's
    /// allocation.
    clients: ShardedMap<ClientKey, Ipv4Addr>,
    reserved_by_mac: HashMap<MacAddr, Ipv4Addr>,
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
    /// Addresses looked at by allocations, for tests of the bound.
    steps: u64,
}

impl LeaseTable {
    pub fn new(pools: Vec<Pool>, reservations: &[(MacAddr, Ipv4Addr)]) -> Self {
        let mut table = Self {
            pools,
            slots: ShardedMap::new(),
            clients: ShardedMap::new(),
            reserved_by_mac: HashMap::new(),
            reserved_ips: HashMap::new(),
            steps: 0,
        };
        for &(mac, ip) in reservations {
            if table.pool_of_subnet(ip).is_some() {
                table.reserved_by_mac.insert(mac, ip);
                table.reserved_ips.insert(ip, mac);
            }
        }
        table
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// The pool whose subnet holds `ip` (the relay's or the arrival interface's address).
    pub fn pool_of_subnet(&self, ip: Ipv4Addr) -> Option<usize> {
        self.pools.iter().position(|p| p.subnet.contains(ip))
    }

    pub fn slot(&self, ip: Ipv4Addr) -> Option<&Slot> {
        self.slots.get(&ip)
    }

    /// The address the table holds for `client`, whatever its state.
    pub fn address_of(&self, client: &ClientKey) -> Option<Ipv4Addr> {
        self.clients.get(client).copied()
    }

    /// How many slots and indexed clients the table holds (for bounds in tests and metrics).
    pub fn sizes(&self) -> (usize, usize) {
        (self.slots.len(), self.clients.len())
    }

    /// Addresses allocations have looked at so far (each costs one map lookup).
    pub fn allocation_steps(&self) -> u64 {
        self.steps
    }

    /// Live bound leases at `now`.
    pub fn bound_count(&self, now: Instant) -> usize {
        self.slots
            .values()
            .filter(|s| s.state == LeaseState::Bound && s.until > now)
            .count()
    }

    /// Whether `ip` belongs to pool `pool` for `mac`: in its range, or reserved for `mac` in
    /// its subnet.
    pub fn belongs(&self, pool: usize, ip: Ipv4Addr, mac: MacAddr) -> bool {
        let Some(p) = self.pools.get(pool) else {
            return false;
        };
        match self.reserved_ips.get(&ip) {
            Some(owner) => *owner == mac && p.subnet.contains(ip),
            None => p.assignable(ip),
        }
    }

    /// Whether `client` (with `mac`) may have `ip` from `pool` at `now`.
    pub fn available(
        &self,
        pool: usize,
        ip: Ipv4Addr,
        client: &ClientKey,
        mac: MacAddr,
        now: Instant,
    ) -> bool {
        self.belongs(pool, ip, mac)
            && self
                .slots
                .get(&ip)
                .is_none_or(|s| s.available_to(client, now))
    }

    /// Whether `client` holds `ip` as a live lease at `now`.
    pub fn holds(&self, ip: Ipv4Addr, client: &ClientKey, now: Instant) -> bool {
        self.slots.get(&ip).is_some_and(|s| s.held_by(client, now))
    }

    /// Whether `ip` was offered to `client` (and nobody took it since, even if the hold ran out).
    pub fn offered_to(&self, ip: Ipv4Addr, client: &ClientKey) -> bool {
        self.slots
            .get(&ip)
            .is_some_and(|s| s.state == LeaseState::Offered && s.client.as_ref() == Some(client))
    }

    /// Whether the table's record of `ip` names `client` (offered, leased or released by it,
    /// expired or not).
    pub fn names(&self, ip: Ipv4Addr, client: &ClientKey) -> bool {
        self.slots
            .get(&ip)
            .is_some_and(|s| s.client.as_ref() == Some(client))
    }

    //= https://www.rfc-editor.org/rfc/rfc2131#section-4.3.1
    //# If an address is available, the new address
    //# SHOULD be chosen as follows:
    //#
    //#    o The client's current address as recorded in the client's current
    //#      binding, ELSE
    //#
    //#    o The client's previous address as recorded in the client's (now
    //#      expired or released) binding, if that address is in the server's
    //#      pool of available addresses and not already allocated, ELSE
    //#
    //#    o The address requested in the 'Requested IP Address' option, if that
    //#      address is valid and not already allocated, ELSE
    //#
    //#    o A new address allocated from the server's pool of available
    //#      addresses; the address is selected based on the subnet from which
    //#      the message was received (if 'giaddr' is 0) or on the address of
    //#      the relay agent that forwarded the message ('giaddr' when not 0).
    //
    // A reservation for the MAC comes before all of these.
    pub fn choose(
        &mut self,
        pool: usize,
        client: &ClientKey,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: Instant,
    ) -> Result<Ipv4Addr, AllocError> {
        if let Some(&ip) = self.reserved_by_mac.get(&mac)
            && self.available(pool, ip, client, mac, now)
        {
            return Ok(ip);
        }
        if let Some(&ip) = self.clients.get(client)
            && self.available(pool, ip, client, mac, now)
        {
            return Ok(ip);
        }
        if let Some(ip) = requested
            && self.available(pool, ip, client, mac, now)
        {
            return Ok(ip);
        }
        self.fresh(pool, now)
    }

    /// The next never-used address from the pool's cursor, else one that lost its slot, else
    /// the address free the longest (expired, released, or declined long enough ago).
    fn fresh(&mut self, pool: usize, now: Instant) -> Result<Ipv4Addr, AllocError> {
        let Some(p) = self.pools.get_mut(pool) else {
            return Err(AllocError::Exhausted);
        };
        if p.is_empty() {
            return Err(AllocError::Exhausted);
        }
        let len = p.len();
        let base = u32::from(p.first);
        while p.cursor < len {
            let ip = Ipv4Addr::from(base + p.cursor);
            p.cursor += 1;
            self.steps += 1;
            if p.assignable(ip)
                && !self.reserved_ips.contains_key(&ip)
                && !self.slots.contains_key(&ip)
            {
                return Ok(ip);
            }
        }
        self.steps += 1;
        if let Some(&ip) = p.returned.first() {
            return Ok(ip);
        }
        // (A released address is free from its release on, which is its `until`.)
        match p.free.first() {
            Some(&(until, ip)) if until <= now => Ok(ip),
            _ => Err(AllocError::Exhausted),
        }
    }

    /// Keeps `ip`'s pool's free sets true across a change of its slot's end (`None`: no slot).
    fn track(&mut self, ip: Ipv4Addr, old: Option<Instant>, new: Option<Instant>) {
        if old == new || self.reserved_ips.contains_key(&ip) {
            return;
        }
        let Some(p) = self
            .pools
            .iter_mut()
            .find(|p| p.in_range(ip) && p.assignable(ip))
        else {
            return;
        };
        match old {
            Some(until) => p.free.remove(&(until, ip)),
            None => p.returned.remove(&ip),
        };
        match new {
            Some(until) => {
                p.free.insert((until, ip));
            }
            None if u32::from(ip) - u32::from(p.first) < p.cursor => {
                p.returned.insert(ip);
            }
            None => {}
        }
    }

    /// Holds `ip` for `client` until `until` (an offer). An offer never overwrites a live lease
    /// of the same client: re-offering a bound address leaves it bound.
    pub fn offer(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientKey,
        mac: MacAddr,
        until: Instant,
        now: Instant,
    ) {
        if self.holds(ip, client, now) {
            return;
        }
        let client = self.shared_key(client);
        self.set(ip, Slot::new(LeaseState::Offered, Some(client), mac, until));
    }

    /// Leases `ip` to `client` until `until`. The changes to write down come back: the lease,
    /// and the client's previous lease elsewhere, now released.
    pub fn bind(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientKey,
        mac: MacAddr,
        until: Instant,
        now: Instant,
    ) -> Vec<LeaseRecord> {
        let mut records = Vec::with_capacity(2);
        if let Some(&old) = self.clients.get(client)
            && old != ip
            && let Some(slot) = self.slots.get_mut(&old)
        {
            match slot.state {
                LeaseState::Offered => {
                    let until = slot.until;
                    self.slots.remove(&old);
                    self.track(old, Some(until), None);
                }
                LeaseState::Bound if slot.until > now => {
                    let until = slot.until;
                    slot.state = LeaseState::Released;
                    slot.until = now;
                    slot.written = None;
                    records.push(record(old, slot, now));
                    self.track(old, Some(until), Some(now));
                }
                _ => {}
            }
        }
        // What is on disk for this address stays true of this client until the new write is
        // confirmed.
        let written = self
            .slots
            .get(&ip)
            .filter(|s| s.state == LeaseState::Bound && s.client.as_ref() == Some(client))
            .and_then(|s| s.written);
        let client = self.shared_key(client);
        let mut slot = Slot::new(LeaseState::Bound, Some(client), mac, until);
        slot.written = written;
        records.push(record(ip, &slot, now));
        self.set(ip, slot);
        records
    }

    /// Marks commit `seq` on `ip` as in flight, or (`None`) done.
    pub fn set_pending(&mut self, ip: Ipv4Addr, seq: Option<u64>) {
        if let Some(slot) = self.slots.get_mut(&ip) {
            slot.pending = seq;
        }
    }

    /// The lease of `client` on `ip` ending at `until` is written: replies may rely on it.
    pub fn mark_written(&mut self, ip: Ipv4Addr, client: &ClientKey, until: Instant) {
        if let Some(slot) = self.slots.get_mut(&ip)
            && slot.state == LeaseState::Bound
            && slot.client.as_ref() == Some(client)
            && slot.written.is_none_or(|w| w < until)
        {
            slot.written = Some(until);
        }
    }

    /// The client gives `ip` back; `None` unless it held it.
    pub fn release(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientKey,
        now: Instant,
    ) -> Option<LeaseRecord> {
        let slot = self.slots.get_mut(&ip)?;
        if slot.client.as_ref() != Some(client) || slot.state != LeaseState::Bound {
            return None;
        }
        let until = slot.until;
        slot.state = LeaseState::Released;
        slot.until = now;
        slot.written = None;
        let rec = record(ip, slot, now);
        self.track(ip, Some(until), Some(now));
        Some(rec)
    }

    /// The client found `ip` in use: nobody gets it before `until`. `None` unless the address
    /// was offered or leased to that client (a forged DECLINE cannot take addresses away).
    pub fn decline(
        &mut self,
        ip: Ipv4Addr,
        client: &ClientKey,
        until: Instant,
        now: Instant,
    ) -> Option<LeaseRecord> {
        let slot = self.slots.get(&ip)?;
        if slot.client.as_ref() != Some(client)
            || !matches!(slot.state, LeaseState::Offered | LeaseState::Bound)
        {
            return None;
        }
        let declined = Slot::new(LeaseState::Declined, None, slot.mac, until);
        let rec = record(ip, &declined, now);
        self.set(ip, declined);
        Some(rec)
    }

    /// Forgets an offer `client` did not take (it chose another server).
    pub fn withdraw_offer(&mut self, client: &ClientKey) {
        if let Some(&ip) = self.clients.get(client)
            && let Some(until) = self
                .slots
                .get(&ip)
                .filter(|s| s.state == LeaseState::Offered)
                .map(|s| s.until)
        {
            self.slots.remove(&ip);
            self.clients.remove(client);
            self.track(ip, Some(until), None);
        }
    }

    /// Restores a stored lease (at start). Addresses outside every pool are skipped: `false`.
    pub fn restore(&mut self, rec: &LeaseRecord, now: Instant) -> bool {
        if rec.state == LeaseState::Offered {
            return false;
        }
        let Some(pool) = self.pool_of_subnet(rec.ip) else {
            return false;
        };
        let in_pool = self.pools[pool].in_range(rec.ip) || self.reserved_ips.contains_key(&rec.ip);
        if !in_pool {
            return false;
        }
        let client = rec.client.as_ref().map(|c| self.shared_key(c));
        let until = now.checked_add(rec.remaining).unwrap_or(now);
        let mut slot = Slot::new(rec.state, client, rec.mac, until);
        if rec.state == LeaseState::Bound {
            slot.written = Some(until);
        }
        self.set(rec.ip, slot);
        true
    }

    /// `client` as the index already holds it, so slot and index share one allocation.
    fn shared_key(&self, client: &ClientKey) -> ClientKey {
        self.clients
            .get_key_value(client)
            .map_or_else(|| client.clone(), |(k, _)| k.clone())
    }

    /// Puts `slot` at `ip`, keeping the client index and the free sets true.
    fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        if let Some(old) = self.slots.get(&ip)
            && let Some(old_client) = &old.client
            && Some(old_client) != slot.client.as_ref()
            && self.clients.get(old_client) == Some(&ip)
        {
            self.clients.remove(old_client);
        }
        let mut dropped_offer = None;
        let old_until = self.slots.get(&ip).map(|s| s.until);
        let new_until = slot.until;
        if let Some(client) = &slot.client {
            if let Some(&prev) = self.clients.get(client)
                && prev != ip
                && self
                    .slots
                    .get(&prev)
                    .is_some_and(|s| s.state == LeaseState::Offered)
            {
                // An offer elsewhere that the client no longer needs.
                dropped_offer = self.slots.remove(&prev).map(|s| (prev, s.until));
            }
            self.clients.insert(client.clone(), ip);
        }
        self.slots.insert(ip, slot);
        self.track(ip, old_until, Some(new_until));
        if let Some((prev, until)) = dropped_offer {
            self.track(prev, Some(until), None);
        }
    }
}

fn record(ip: Ipv4Addr, slot: &Slot, now: Instant) -> LeaseRecord {
    LeaseRecord {
        ip,
        state: slot.state,
        client: slot.client.clone(),
        mac: slot.mac,
        remaining: slot.until.saturating_duration_since(now),
    }
}
