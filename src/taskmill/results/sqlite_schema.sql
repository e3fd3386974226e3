-- taskmill's result store on SQLite: values, counters and locks in one table, sets in another.
-- expires_at is in ms on this machine's clock; expired rows read as absent and are swept in batches.
CREATE TABLE IF NOT EXISTS taskmill_kv (
    key        TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,  -- value | counter | lock
    value      BLOB,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS taskmill_kv_expiry ON taskmill_kv (expires_at);

CREATE TABLE IF NOT EXISTS taskmill_set_members (
    key        TEXT    NOT NULL,
    member     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (key, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS taskmill_set_members_expiry ON taskmill_set_members (expires_at);
