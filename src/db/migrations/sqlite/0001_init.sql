-- zpxe schema 1 (SQLite): boot timelines and the machine registry.
-- Times are milliseconds since the Unix epoch; addresses are 16-byte blobs (IPv4 as ::ffff:a.b.c.d)
-- so a subnet is one byte range; MACs are 6 bytes, UUIDs 16 bytes as they travel in DHCP.

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (key, value) VALUES ('registry_generation', 1);

CREATE TABLE machines (
    id INTEGER PRIMARY KEY,
    mac BLOB NOT NULL UNIQUE,
    uuid BLOB,
    ip BLOB,
    arch INTEGER,
    stage TEXT NOT NULL DEFAULT '',
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    boots INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX machines_last_seen ON machines (last_seen);
CREATE INDEX machines_ip ON machines (ip, last_seen);
CREATE INDEX machines_stage ON machines (stage);

CREATE TABLE boots (
    id INTEGER PRIMARY KEY,
    machine_id INTEGER NOT NULL,
    started INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    finished INTEGER,
    phase INTEGER NOT NULL,
    stage TEXT NOT NULL,
    outcome TEXT,
    ip BLOB,
    arch INTEGER
);
CREATE INDEX boots_machine ON boots (machine_id, id);
CREATE INDEX boots_last_seen ON boots (last_seen);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    boot_id INTEGER,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    ip BLOB,
    name TEXT,
    detail TEXT,
    outcome TEXT,
    bytes INTEGER,
    duration_ms INTEGER,
    retransmits INTEGER,
    range_start INTEGER,
    range_end INTEGER,
    status INTEGER,
    arch INTEGER
);
CREATE INDEX events_boot ON events (boot_id, id);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_kind ON events (kind, id);

CREATE TABLE registry (
    id INTEGER PRIMARY KEY,
    mac BLOB UNIQUE,
    uuid BLOB UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    grp TEXT NOT NULL DEFAULT '',
    entry TEXT,
    loader TEXT,
    variables TEXT NOT NULL DEFAULT '{}',
    boot_once INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    updated INTEGER NOT NULL,
    CHECK (mac IS NOT NULL OR uuid IS NOT NULL)
);
