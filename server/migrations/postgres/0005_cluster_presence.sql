-- Cluster mode (issue 14): who is present on which topic, on every node.
-- `key` orders the members of a topic across the cluster (the node's tag
-- in the high bits, the connection id in the low 40): `presence.get`
-- pages by it, on any node.

CREATE TABLE cluster_presence (
    topic   TEXT   COLLATE "C" NOT NULL,
    key     BIGINT NOT NULL,
    node    TEXT   COLLATE "C" NOT NULL,
    session TEXT   NOT NULL,
    usr     TEXT   NOT NULL,
    info    BYTEA,
    PRIMARY KEY (topic, key)
);

CREATE INDEX cluster_presence_node ON cluster_presence (node);
