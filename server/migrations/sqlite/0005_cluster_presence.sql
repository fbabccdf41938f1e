-- Cluster mode (issue 14) runs on PostgreSQL only; this table is never used
-- on SQLite. It is here so that both backends have the same migration
-- versions.

CREATE TABLE cluster_presence (
    topic   TEXT    NOT NULL,
    key     INTEGER NOT NULL,
    node    TEXT    NOT NULL,
    session TEXT    NOT NULL,
    usr     TEXT    NOT NULL,
    info    BLOB,
    PRIMARY KEY (topic, key)
);
