-- Cluster mode (issue 14) runs on PostgreSQL only; this table is never used
-- on SQLite. It is here so that both backends have the same migration
-- versions (plexus migrate reports the same numbers on either).

CREATE TABLE cluster_nodes (
    id         TEXT NOT NULL PRIMARY KEY,
    listen     TEXT NOT NULL,
    started_at TEXT NOT NULL,
    seen_at    TEXT NOT NULL
);
