-- zpxe schema 2 (PostgreSQL): the DHCP server's leases (dhcp.mode = "server").
-- One row per address ever leased, released or declined; ip is the IPv4 address as an integer,
-- expires milliseconds since the Unix epoch. Offers are not stored.

CREATE TABLE leases (
    ip BIGINT PRIMARY KEY,
    state TEXT NOT NULL,
    client_id BYTEA,
    mac BYTEA NOT NULL,
    expires BIGINT NOT NULL,
    updated BIGINT NOT NULL
);
CREATE INDEX leases_mac ON leases (mac);
