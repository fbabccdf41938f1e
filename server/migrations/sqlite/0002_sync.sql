-- Record sync (issue 11). Published migrations are never edited: add a new
-- file instead.
--
-- A space's records table is also its change log: each row carries the
-- position of the record's last change (design Y3 in docs/decisions.md).

CREATE TABLE sync_spaces (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    epoch            TEXT    NOT NULL,
    last_position    INTEGER NOT NULL DEFAULT 0,
    horizon_position INTEGER NOT NULL DEFAULT 0,
    records          INTEGER NOT NULL DEFAULT 0,
    bytes            INTEGER NOT NULL DEFAULT 0
);

-- Live counts, bytes and the checksum (wrapping sum, stored as a signed
-- 64-bit integer) per collection.
CREATE TABLE sync_collections (
    space         INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    records       INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    checksum      INTEGER NOT NULL,
    PRIMARY KEY (space, name)
) WITHOUT ROWID;

CREATE TABLE sync_records (
    space       INTEGER NOT NULL,
    collection  TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    deleted     INTEGER NOT NULL,
    base_hlc    INTEGER NOT NULL,
    base_actor  TEXT    NOT NULL,
    base_delete INTEGER NOT NULL,
    last_hlc    INTEGER NOT NULL,
    last_actor  TEXT    NOT NULL,
    expires_at  INTEGER,
    deleted_at  INTEGER,
    size        INTEGER NOT NULL,
    fields      BLOB    NOT NULL,
    PRIMARY KEY (space, collection, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX sync_records_position ON sync_records (space, position);
CREATE INDEX sync_records_collection ON sync_records (space, collection, position);
CREATE INDEX sync_records_expiry ON sync_records (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX sync_records_tombstones ON sync_records (deleted_at) WHERE deleted_at IS NOT NULL;

-- Push idempotency per (space, client), kept for as long as the space.
CREATE TABLE sync_clients (
    space         INTEGER NOT NULL,
    client        TEXT    NOT NULL,
    last_seq      INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    PRIMARY KEY (space, client)
) WITHOUT ROWID;
