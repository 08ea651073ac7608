//! The address table of the DHCP server: pools per subnet, one slot per address that has ever
//! been offered, bound, released or declined, and the client each slot belongs to.
//!
//! Memory is bounded by configuration, not by traffic: a slot exists only for an address of a
//! pool (or a reservation), and a client is indexed only while a slot names it, so an attacker
//! sending DISCOVERs from random MACs can hold at most every address of the pool, never more
//! entries than the pool has addresses. Expiry is lazy: every state carries its end, and a slot
//! whose end has passed is free to take; no timer runs.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::ids::MacAddr;
use super::policy::Ipv4Cidr;
use super::wire::DhcpRepr;

/// Addresses one allocation probes at most: a pool of 65,536 full of live leases costs a
/// random-MAC DISCOVER 4,096 map lookups, never a walk of the whole pool. The cursor moves on,
/// so successive allocations cover the pool.
const PROBE_BUDGET: u32 = 4096;
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(Box<[u8]>);

impl ClientKey {
    pub fn from_request(request: &DhcpRepr) -> Self {
        match request.options.client_id.as_deref() {
            Some(id) if !id.is_empty() => Self(id.into()),
            _ => Self::from_mac(request.client_mac),
        }
    }

    pub fn from_mac(mac: MacAddr) -> Self {
        let mut key = Vec::with_capacity(7);
        key.push(1);
        key.extend_from_slice(&mac.0);
        Self(key.into())
    }

    /// A stored key: 1 to 255 bytes, as option 61 allows.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (!bytes.is_empty() && bytes.len() <= 255).then(|| Self(bytes.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
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
}

impl Slot {
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
    cursor: u32,
}

impl Pool {
    pub fn new(subnet: Ipv4Cidr, first: Ipv4Addr, last: Ipv4Addr, excluded: Vec<Ipv4Addr>) -> Self {
        Self {
            subnet,
            first,
            last,
            excluded,
            cursor: 0,
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
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.subnet.prefix_len))
            .unwrap_or(0);
        let host = u32::from(ip) & !mask;
        // The network and broadcast addresses of the subnet (/31 and /32 have neither).
        let special = self.subnet.prefix_len < 31 && (host == 0 || host == !mask);
        self.in_range(ip) && !special && !self.excluded.contains(&ip)
    }
}

/// Why no address could be chosen.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// Every probed address is leased, offered or declined.
    Exhausted,
}

/// The table: pools, slots, the client index and the reservations.
#[derive(Debug)]
pub struct LeaseTable {
    pools: Vec<Pool>,
    slots: HashMap<Ipv4Addr, Slot>,
    /// A client's current address. Invariant: `clients[k] == ip` implies `slots[ip].client ==
    /// Some(k)`, so this map never has more entries than `slots`.
    clients: HashMap<ClientKey, Ipv4Addr>,
    reserved_by_mac: HashMap<MacAddr, Ipv4Addr>,
    reserved_ips: HashMap<Ipv4Addr, MacAddr>,
}

impl LeaseTable {
    pub fn new(pools: Vec<Pool>, reservations: &[(MacAddr, Ipv4Addr)]) -> Self {
        let mut table = Self {
            pools,
            slots: HashMap::new(),
            clients: HashMap::new(),
            reserved_by_mac: HashMap::new(),
            reserved_ips: HashMap::new(),
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
        self.fresh(pool, client, now)
    }

    /// The next never-used address from the pool's cursor, else the probed address free the
    /// longest (expired, released, or declined long enough ago).
    fn fresh(
        &mut self,
        pool: usize,
        client: &ClientKey,
        now: Instant,
    ) -> Result<Ipv4Addr, AllocError> {
        let Some(p) = self.pools.get(pool) else {
            return Err(AllocError::Exhausted);
        };
        let len = p.len();
        if p.is_empty() {
            return Err(AllocError::Exhausted);
        }
        let probes = len.min(PROBE_BUDGET);
        let start = p.cursor % len;
        let base = u32::from(p.first);
        let mut reclaim: Option<(Instant, Ipv4Addr)> = None;
        let mut found = None;
        let mut probed = 0;
        while probed < probes {
            let offset = (start + probed) % len;
            probed += 1;
            let ip = Ipv4Addr::from(base + offset);
            if !p.assignable(ip) || self.reserved_ips.contains_key(&ip) {
                continue;
            }
            match self.slots.get(&ip) {
                None => {
                    found = Some(ip);
                    break;
                }
                Some(slot) if slot.available_to(client, now) => {
                    if reclaim.is_none_or(|(until, _)| slot.until < until) {
                        reclaim = Some((slot.until, ip));
                    }
                }
                Some(_) => {}
            }
        }
        if let Some(p) = self.pools.get_mut(pool) {
            p.cursor = (start + probed) % len;
        }
        found
            .or(reclaim.map(|(_, ip)| ip))
            .ok_or(AllocError::Exhausted)
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
        self.set(
            ip,
            Slot {
                state: LeaseState::Offered,
                client: Some(client.clone()),
                mac,
                until,
            },
        );
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
                    self.slots.remove(&old);
                }
                LeaseState::Bound if slot.until > now => {
                    slot.state = LeaseState::Released;
                    slot.until = now;
                    records.push(record(old, slot, now));
                }
                _ => {}
            }
        }
        let slot = Slot {
            state: LeaseState::Bound,
            client: Some(client.clone()),
            mac,
            until,
        };
        records.push(record(ip, &slot, now));
        self.set(ip, slot);
        records
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
        slot.state = LeaseState::Released;
        slot.until = now;
        Some(record(ip, slot, now))
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
        let declined = Slot {
            state: LeaseState::Declined,
            client: None,
            mac: slot.mac,
            until,
        };
        let rec = record(ip, &declined, now);
        self.set(ip, declined);
        Some(rec)
    }

    /// Forgets an offer `client` did not take (it chose another server).
    pub fn withdraw_offer(&mut self, client: &ClientKey) {
        if let Some(&ip) = self.clients.get(client)
            && self
                .slots
                .get(&ip)
                .is_some_and(|s| s.state == LeaseState::Offered)
        {
            self.slots.remove(&ip);
            self.clients.remove(client);
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
        let slot = Slot {
            state: rec.state,
            client: rec.client.clone(),
            mac: rec.mac,
            until: now.checked_add(rec.remaining).unwrap_or(now),
        };
        self.set(rec.ip, slot);
        true
    }

    /// Puts `slot` at `ip`, keeping the client index true.
    fn set(&mut self, ip: Ipv4Addr, slot: Slot) {
        if let Some(old) = self.slots.get(&ip)
            && let Some(old_client) = &old.client
            && Some(old_client) != slot.client.as_ref()
            && self.clients.get(old_client) == Some(&ip)
        {
            self.clients.remove(old_client);
        }
        if let Some(client) = &slot.client {
            if let Some(&prev) = self.clients.get(client)
                && prev != ip
                && self
                    .slots
                    .get(&prev)
                    .is_some_and(|s| s.state == LeaseState::Offered)
            {
                // An offer elsewhere that the client no longer needs.
                self.slots.remove(&prev);
            }
            self.clients.insert(client.clone(), ip);
        }
        self.slots.insert(ip, slot);
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
