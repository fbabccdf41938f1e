-- Cluster mode (issue 14) runs on PostgreSQL only; this table is never used
-- on SQLite. It is here so that both backends have the same migration
-- versions.

CREATE TABLE cluster_conns (
    session TEXT NOT NULL PRIMARY KEY,
    node    TEXT NOT NULL,
    usr     TEXT NOT NULL
);
