-- taskmill on PostgreSQL, migration 1. "{schema}" is replaced by the configured schema name.
-- Messages: one row per queued or leased message, deleted on ack. available_at is the run-at time
-- while a message waits and the lease expiry while leased; times are the database's clock.
CREATE TABLE {schema}.messages (
    seq          bigserial   PRIMARY KEY,
    id           text        NOT NULL UNIQUE,
    queue        text        NOT NULL,
    priority     smallint    NOT NULL,
    available_at timestamptz NOT NULL,
    deliveries   integer     NOT NULL DEFAULT 0,
    token        text,
    body         bytea       NOT NULL
);
CREATE INDEX messages_order ON {schema}.messages (queue, priority DESC, seq);
CREATE INDEX messages_due ON {schema}.messages (queue, available_at);

CREATE TABLE {schema}.dead (
    id            text        PRIMARY KEY,
    queue         text        NOT NULL,
    priority      smallint    NOT NULL,
    body          bytea       NOT NULL,
    reason        text        NOT NULL,
    error_type    text        NOT NULL,
    error_message text        NOT NULL,
    traceback     text        NOT NULL,
    deliveries    integer     NOT NULL,
    dead_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    dead_seq      bigserial
);
CREATE INDEX dead_newest ON {schema}.dead (queue, dead_at DESC, dead_seq DESC);
CREATE INDEX dead_age ON {schema}.dead (dead_at);

CREATE TABLE {schema}.queues (name text PRIMARY KEY);

-- The result store: values, counters and locks in kv; sets in set_members.
CREATE TABLE {schema}.kv (
    key        text        PRIMARY KEY,
    kind       text        NOT NULL,
    value      bytea,
    expires_at timestamptz NOT NULL
);
CREATE INDEX kv_expiry ON {schema}.kv (expires_at);

CREATE TABLE {schema}.set_members (
    key        text        NOT NULL,
    member     text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE INDEX set_members_expiry ON {schema}.set_members (expires_at);
