//! The nodes of the cluster, as PostgreSQL knows them: each node writes its
//! heartbeat every `cluster-heartbeat`, and a node whose last heartbeat is
//! older than `cluster-node-expiry` (by the database's clock) counts as
//! dead.

use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::storage::StorageError;

/// Rows of nodes not heard of for this long are deleted.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A node seen alive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeSeen {
    /// Its id.
    pub id: String,
    /// The address it listens on.
    pub listen: String,
    /// Milliseconds since its last heartbeat.
    pub age_ms: u64,
}

/// The node table.
#[derive(Debug, Clone)]
pub struct Nodes {
    pool: PgPool,
    id: String,
    listen: String,
    expiry: Duration,
}

impl Nodes {
    /// Connects to the database (two connections; no I/O until the first
    /// heartbeat, so a database that is down does not stop the start).
    pub fn connect(
        url: &str,
        id: &str,
        listen: &str,
        expiry: Duration,
    ) -> Result<Nodes, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(expiry)
            .connect_lazy(url)?;
        Ok(Nodes {
            pool,
            id: id.to_owned(),
            listen: listen.to_owned(),
            expiry,
        })
    }

    /// The pool (shared with the presence table).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes this node's heartbeat and returns the nodes alive (this one
    /// included), by id, and whether this node had been silent for longer
    /// than the expiry (the others took it for dead and removed its
    /// presence: it writes it again).
    pub async fn beat(&self) -> Result<(Vec<NodeSeen>, bool), StorageError> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let silent: Option<bool> = sqlx::query_scalar(
            "SELECT now() - seen_at > make_interval(secs => $2::int8 / 1000.0) \
             FROM cluster_nodes WHERE id = $1",
        )
        .bind(&self.id)
        .bind(ms(self.expiry))
        .fetch_optional(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO cluster_nodes (id, listen, started_at, seen_at) \
             VALUES ($1, $2, now(), now()) \
             ON CONFLICT (id) DO UPDATE SET listen = excluded.listen, seen_at = now()",
        )
        .bind(&self.id)
        .bind(&self.listen)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM cluster_nodes WHERE seen_at < now() - make_interval(secs => $1::int8 / 1000.0)",
        )
        .bind(ms(FORGET_AFTER))
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT id, listen, (extract(epoch FROM now() - seen_at) * 1000)::int8 FROM cluster_nodes \
             WHERE seen_at >= now() - make_interval(secs => $1::int8 / 1000.0) ORDER BY id",
        )
        .bind(ms(self.expiry))
        .fetch_all(&self.pool)
        .await?;
        let seen = rows
            .iter()
            .map(|r| {
                Ok(NodeSeen {
                    id: r.try_get(0)?,
                    listen: r.try_get(1)?,
                    age_ms: u64::try_from(r.try_get::<i64, _>(2)?).unwrap_or(0),
                })
            })
            .collect::<Result<_, StorageError>>()?;
        Ok((seen, silent == Some(true)))
    }

    /// Removes this node's row (a clean shutdown: the others need not wait
    /// for its expiry).
    pub async fn leave(&self) {
        let _ = sqlx::query("DELETE FROM cluster_nodes WHERE id = $1")
            .bind(&self.id)
            .execute(&self.pool)
            .await;
    }
}
