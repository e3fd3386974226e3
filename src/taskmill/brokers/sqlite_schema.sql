-- taskmill's embedded broker. One row per queued or leased message; a row is deleted on ack.
-- available_at (ms) is the run-at time while a message waits and the lease expiry while leased,
-- so "fetchable" is one comparison whatever the state.
CREATE TABLE IF NOT EXISTS taskmill_messages (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    token        TEXT,
    body         BLOB    NOT NULL
);
-- The fetch walks this index in order (INDEXED BY: the planner would pick _due and sort every due
-- row); available_at rides along so rows not yet due are skipped without reading the table.
DROP INDEX IF EXISTS taskmill_messages_order;
CREATE INDEX IF NOT EXISTS taskmill_messages_fetch ON taskmill_messages (queue, priority DESC, seq, available_at);
CREATE INDEX IF NOT EXISTS taskmill_messages_due ON taskmill_messages (queue, available_at);

CREATE TABLE IF NOT EXISTS taskmill_dead (
    id            TEXT    PRIMARY KEY,
    queue         TEXT    NOT NULL,
    priority      INTEGER NOT NULL,
    body          BLOB    NOT NULL,
    reason        TEXT    NOT NULL,
    error_type    TEXT    NOT NULL,
    error_message TEXT    NOT NULL,
    traceback     TEXT    NOT NULL,
    deliveries    INTEGER NOT NULL,
    dead_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS taskmill_dead_queue ON taskmill_dead (queue, dead_at);

CREATE TABLE IF NOT EXISTS taskmill_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
