-- Cluster mode (issue 14) runs on PostgreSQL only; this table is never used
-- on SQLite. It is here so that both backends have the same migration
-- versions.

CREATE TABLE cluster_registrations (
    reg             INTEGER PRIMARY KEY AUTOINCREMENT,
    node            TEXT NOT NULL,
    procedure       TEXT NOT NULL,
    policy          TEXT NOT NULL,
    max_concurrency INTEGER NOT NULL,
    disclose        TEXT NOT NULL,
    usr             TEXT NOT NULL,
    session         TEXT NOT NULL
);
