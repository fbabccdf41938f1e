-- Cluster mode (issue 14): the nodes of a cluster and when each was last
-- heard of. Times are the database's own clock (now()), so nodes whose
-- clocks disagree still agree on who is alive.

CREATE TABLE cluster_nodes (
    id         TEXT        COLLATE "C" PRIMARY KEY,
    listen     TEXT        NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL
);
