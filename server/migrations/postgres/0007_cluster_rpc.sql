-- Cluster mode (issue 14): the directory of routed-RPC registrations of
-- every node. A registration's id is its `reg` here, so ids are unique in
-- the cluster and ordered as registered (`first` / `last`).

CREATE TABLE cluster_registrations (
    reg             BIGSERIAL PRIMARY KEY,
    node            TEXT COLLATE "C" NOT NULL,
    procedure       TEXT COLLATE "C" NOT NULL,
    policy          TEXT NOT NULL,
    max_concurrency INT8 NOT NULL,
    disclose        TEXT[] NOT NULL,
    usr             TEXT COLLATE "C" NOT NULL,
    session         TEXT COLLATE "C" NOT NULL
);

CREATE INDEX cluster_registrations_procedure ON cluster_registrations (procedure);
CREATE INDEX cluster_registrations_node ON cluster_registrations (node);
