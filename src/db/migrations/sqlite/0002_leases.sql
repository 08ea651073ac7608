-- zpxe schema 2 (SQLite): the DHCP server's leases (dhcp.mode = "server").
-- One row per address ever leased, released or declined; ip is the IPv4 address as an integer,
-- expires milliseconds since the Unix epoch. Offers are not stored.

CREATE TABLE leases (
    ip INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    client_id BLOB,
    mac BLOB NOT NULL,
    expires INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE INDEX leases_mac ON leases (mac);
