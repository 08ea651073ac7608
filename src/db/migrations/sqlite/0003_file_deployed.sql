-- zpxe schema 3 (SQLite): boot-once machines of the configuration ([[machine]] in zpxe.toml or
-- conf.d/) that have been deployed. A file record has no registry row to keep that state in.
-- key is "mac:aa:bb:cc:dd:ee:ff" (or "uuid:..." for a record without a MAC), updated
-- milliseconds since the Unix epoch.

CREATE TABLE file_deployed (
    key TEXT PRIMARY KEY,
    updated INTEGER NOT NULL
);
