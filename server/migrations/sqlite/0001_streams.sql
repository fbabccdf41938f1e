-- Durable streams (issue 10). Published migrations are never edited: add a
-- new file instead.
--
-- Integers are offsets, positions, sequence numbers and milliseconds;
-- `off` is a topic's offset (OFFSET is a keyword).

-- One row per configured stream namespace; `pattern` is its identity.
CREATE TABLE namespaces (
    id            INTEGER PRIMARY KEY,
    pattern       TEXT    NOT NULL UNIQUE,
    epoch         TEXT    NOT NULL,
    last_position INTEGER NOT NULL DEFAULT 0
);

-- One row per durable topic that was ever written. Rows are never deleted,
-- so offsets never restart (retention only moves first_offset).
CREATE TABLE topics (
    id              INTEGER PRIMARY KEY,
    ns              INTEGER NOT NULL REFERENCES namespaces (id),
    name            TEXT    NOT NULL UNIQUE,
    epoch           TEXT    NOT NULL,
    first_offset    INTEGER NOT NULL,
    last_offset     INTEGER NOT NULL,
    last_position   INTEGER NOT NULL DEFAULT 0,
    bytes           INTEGER NOT NULL,
    pruned_position INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX topics_ns_name ON topics (ns, name);
CREATE INDEX topics_ns_pruned ON topics (ns, pruned_position);

-- The events. Clustered by (topic, off), so catching up on one topic reads
-- the table in order; the body comes last so that retention's reads of the
-- small columns stop before it.
CREATE TABLE events (
    topic    INTEGER NOT NULL,
    off      INTEGER NOT NULL,
    ns       INTEGER NOT NULL,
    position INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    producer INTEGER,
    seq      INTEGER,
    body     BLOB    NOT NULL,
    PRIMARY KEY (topic, off)
) WITHOUT ROWID;
CREATE UNIQUE INDEX events_ns_position ON events (ns, position);
CREATE INDEX events_producer_seq ON events (producer, seq) WHERE producer IS NOT NULL;

-- Producer idempotency: the greatest sequence number per (topic, producer),
-- kept for as long as the topic exists (no window).
CREATE TABLE producers (
    id            INTEGER PRIMARY KEY,
    topic         INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    last_seq      INTEGER NOT NULL,
    last_offset   INTEGER,
    last_position INTEGER,
    pruned_seq    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic, name)
);

-- Idempotency keys, kept for the idempotency retention.
CREATE TABLE idempotency_keys (
    topic    INTEGER NOT NULL,
    key      TEXT    NOT NULL,
    off      INTEGER NOT NULL,
    position INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    PRIMARY KEY (topic, key)
);
CREATE INDEX idempotency_keys_ts ON idempotency_keys (ts);
