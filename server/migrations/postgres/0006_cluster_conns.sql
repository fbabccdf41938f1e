-- Cluster mode (issue 14): the authenticated connections of every node, so
-- that `max-connections-per-user` counts a user's connections on all nodes.

CREATE TABLE cluster_conns (
    session TEXT COLLATE "C" PRIMARY KEY,
    node    TEXT COLLATE "C" NOT NULL,
    usr     TEXT COLLATE "C" NOT NULL
);

CREATE INDEX cluster_conns_usr ON cluster_conns (usr);
CREATE INDEX cluster_conns_node ON cluster_conns (node);
