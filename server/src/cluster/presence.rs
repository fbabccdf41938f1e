//! Presence across the cluster.
//!
//! Each node keeps its own members in memory, as a single hub does, and
//! tells the others:
//!
//! - **Notices**: every `presence.join` / `presence.leave` of a member here
//!   is sent on the topic's presence subject (`PREFIX.p.TOPIC`); a node
//!   subscribes to it while it has members of that topic, and queues what
//!   arrives for them. So a member sees the joins and leaves of members on
//!   every node.
//! - **The table** `cluster_presence`: a writer task applies this node's
//!   joins, leaves and info changes in order, in batches, so that
//!   `presence.get` on any node can list the members of every node. Each
//!   member has a cluster-wide key — this node's 23-bit tag above its
//!   connection id — and pages are in key order, so a cursor handed out by
//!   one node works on another.
//! - **Expiry**: after each heartbeat, a node deletes the rows of the nodes
//!   no longer alive (`DELETE … RETURNING`, so each row is deleted by one
//!   node only) and announces a `presence.leave` for each, here and on
//!   NATS. A node that starts deletes what an earlier run of it left.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use plexus_protocol::NotificationMethod;
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::{Member, PresenceLeave, PresenceNotice};
use plexus_protocol::{DecodeLimits, RawValue};
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::mpsc;

use crate::broker::presence::PresenceListener;
use crate::conn::{Conn, ConnId};
use crate::storage::StorageError;

/// Bits of a member key that hold the connection id.
pub const CONN_BITS: u32 = 40;
/// Most presence changes waiting for the writer; past it a change is
/// dropped from the table (counted; the notices still go out).
pub const WRITE_QUEUE: usize = 65_536;
/// Most changes the writer applies in one transaction.
pub const WRITE_BATCH: usize = 256;

/// This node's tag: 23 bits of a hash of its id (FNV-1a), so that keys fit
/// in a signed 64-bit column.
pub fn node_tag(node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h & ((1 << 23) - 1)
}

/// The cluster-wide key of connection `conn` of the node tagged `tag`.
pub fn member_key(tag: u64, conn: ConnId) -> u64 {
    (tag << CONN_BITS) | (conn & ((1 << CONN_BITS) - 1))
}

/// Sends a presence notice to the other nodes: `(topic, frame, interest)`,
/// where `Some(true)` first takes and `Some(false)` then drops this node's
/// interest in the topic's notices.
pub(crate) type Notify = Box<dyn Fn(&str, &Bytes, Option<bool>) + Send + Sync>;

/// A change for the table.
#[derive(Debug)]
pub(crate) enum Change {
    Join {
        topic: Box<str>,
        key: u64,
        session: Arc<str>,
        user: Box<str>,
        info: Option<Bytes>,
    },
    Leave {
        topic: Box<str>,
        key: u64,
    },
    Info {
        topic: Box<str>,
        key: u64,
        info: Option<Bytes>,
    },
    /// An authenticated connection here (the per-user limit).
    ConnOpen {
        session: Arc<str>,
        user: Box<str>,
    },
    /// It ended.
    ConnClose {
        session: Arc<str>,
    },
}

/// The presence side of a node: the listener the broker calls and the
/// table's queries.
pub struct ClusterPresence {
    pub(crate) node: Arc<str>,
    pub(crate) tag: u64,
    pool: PgPool,
    writes: mpsc::Sender<Change>,
    /// Changes dropped because the writer's queue was full.
    pub dropped: AtomicU64,
    notify: Notify,
}

impl std::fmt::Debug for ClusterPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPresence")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ClusterPresence {
    /// The presence side of node `node` on `pool`; `notify(topic, frame,
    /// interest)` sends a notice to the other nodes and, with
    /// `Some(first)`, takes (`true`) or drops (`false`) this node's
    /// interest in the topic's notices. Returns it and the writer's queue.
    pub(crate) fn new(
        node: Arc<str>,
        pool: PgPool,
        notify: Notify,
    ) -> (Arc<ClusterPresence>, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let p = Arc::new(ClusterPresence {
            tag: node_tag(&node),
            node,
            pool,
            writes: tx,
            dropped: AtomicU64::new(0),
            notify,
        });
        (p, rx)
    }

    fn write(&self, c: Change) {
        if self.writes.try_send(c).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("plexus_cluster_presence_dropped_total").increment(1);
        }
    }

    /// A page of the members of `topic` on the other alive nodes from
    /// `cursor` (inclusive), at most `limit`, with their keys.
    pub async fn remote_page(
        &self,
        topic: &str,
        cursor: u64,
        limit: usize,
        alive: &[String],
    ) -> Result<Vec<(u64, Member)>, StorageError> {
        let rows = sqlx::query(
            "SELECT key, session, usr, info FROM cluster_presence \
             WHERE topic = $1 AND key >= $2 AND node <> $3 AND node = ANY($4) \
             ORDER BY key LIMIT $5",
        )
        .bind(topic)
        .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
        .bind(&*self.node)
        .bind(alive)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let info: Option<Vec<u8>> = r.try_get(3)?;
                Ok((
                    u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
                    Member {
                        session: r.try_get(1)?,
                        user: r.try_get(2)?,
                        info: info.and_then(|i| {
                            RawValue::from_bytes(Bytes::from(i), &DecodeLimits::default()).ok()
                        }),
                    },
                ))
            })
            .collect()
    }

    /// Deletes the rows of nodes not in `alive` (or, with `own`, this
    /// node's rows left by an earlier run) and announces a leave for each.
    /// Returns how many.
    pub(crate) async fn expire(
        &self,
        alive: &[String],
        own: bool,
        local: &(dyn Fn(&str, &Bytes) + Sync),
    ) -> Result<u64, StorageError> {
        let rows = if own {
            sqlx::query("DELETE FROM cluster_conns WHERE node = $1")
                .bind(&*self.node)
                .execute(&self.pool)
                .await?;
            sqlx::query(
                "DELETE FROM cluster_presence WHERE node = $1 RETURNING topic, session, usr",
            )
            .bind(&*self.node)
            .fetch_all(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM cluster_conns WHERE node <> ALL($1)")
                .bind(alive)
                .execute(&self.pool)
                .await?;
            sqlx::query(
                "DELETE FROM cluster_presence WHERE node <> ALL($1) RETURNING topic, session, usr",
            )
            .bind(alive)
            .fetch_all(&self.pool)
            .await?
        };
        for r in &rows {
            let topic: String = r.try_get(0)?;
            let member = Member {
                session: r.try_get(1)?,
                user: r.try_get(2)?,
                info: None,
            };
            let n = PresenceNotice {
                topic: topic.clone(),
                member,
            };
            if let Ok(frame) = encode_notification(PresenceLeave::NAME, &n) {
                let frame = Bytes::from(frame);
                local(&topic, &frame);
                (self.notify)(&topic, &frame, None);
            }
        }
        if !rows.is_empty() {
            metrics::counter!("plexus_cluster_presence_expired_total").increment(rows.len() as u64);
        }
        Ok(rows.len() as u64)
    }
}

impl ClusterPresence {
    /// Records an authenticated connection here (or, `open` false, its
    /// end) for the per-user limit of the other nodes.
    pub(crate) fn connection(&self, conn: &Conn, open: bool) {
        self.write(if open {
            Change::ConnOpen {
                session: conn.session.clone(),
                user: conn.user().into(),
            }
        } else {
            Change::ConnClose {
                session: conn.session.clone(),
            }
        });
    }

    /// The connections of `user` on the other alive nodes.
    pub async fn remote_connections(
        &self,
        user: &str,
        alive: &[String],
    ) -> Result<usize, StorageError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cluster_conns WHERE usr = $1 AND node <> $2 AND node = ANY($3)",
        )
        .bind(user)
        .bind(&*self.node)
        .bind(alive)
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Writes `conn`'s membership of `topic` to the table again.
    pub(crate) fn rewrite(&self, topic: &str, conn: &Conn) {
        self.write(Change::Join {
            topic: topic.into(),
            key: member_key(self.tag, conn.id),
            session: conn.session.clone(),
            user: conn.user().into(),
            info: info_of(conn),
        });
    }
}

fn info_of(conn: &Conn) -> Option<Bytes> {
    conn.info
        .lock()
        .as_ref()
        .map(|i| Bytes::copy_from_slice(i.as_bytes()))
}

impl PresenceListener for ClusterPresence {
    fn joined(&self, topic: &str, conn: &Conn, frame: &Bytes, first: bool) {
        (self.notify)(topic, frame, first.then_some(true));
        self.rewrite(topic, conn);
    }

    fn left(&self, topic: &str, conn: &Conn, frame: &Bytes, last: bool) {
        (self.notify)(topic, frame, last.then_some(false));
        self.write(Change::Leave {
            topic: topic.into(),
            key: member_key(self.tag, conn.id),
        });
    }

    fn info_changed(&self, topic: &str, conn: &Conn, frame: &Bytes) {
        (self.notify)(topic, frame, None);
        self.write(Change::Info {
            topic: topic.into(),
            key: member_key(self.tag, conn.id),
            info: info_of(conn),
        });
    }
}

/// The writer task: applies the changes in order, a batch per transaction;
/// a failed batch is retried (the database is down: the changes wait in
/// the bounded queue meanwhile).
pub(crate) async fn run_writer(p: Arc<ClusterPresence>, mut rx: mpsc::Receiver<Change>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut attempt = 0u32;
        loop {
            match apply(&p, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::warn!(error = %e, "cannot write presence to the cluster database");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(
                        100 * u64::from(attempt.min(10)),
                    ))
                    .await;
                }
            }
        }
        batch.clear();
    }
}

async fn apply(p: &ClusterPresence, batch: &[Change]) -> Result<(), StorageError> {
    let key = |k: u64| i64::try_from(k).unwrap_or(i64::MAX);
    let mut tx = p.pool.begin().await?;
    for c in batch {
        match c {
            Change::Join {
                topic,
                key: k,
                session,
                user,
                info,
            } => {
                sqlx::query(
                    "INSERT INTO cluster_presence (topic, key, node, session, usr, info) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (topic, key) DO UPDATE SET \
                     node = excluded.node, session = excluded.session, usr = excluded.usr, \
                     info = excluded.info",
                )
                .bind(&**topic)
                .bind(key(*k))
                .bind(&*p.node)
                .bind(&**session)
                .bind(&**user)
                .bind(info.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            Change::Leave { topic, key: k } => {
                sqlx::query("DELETE FROM cluster_presence WHERE topic = $1 AND key = $2")
                    .bind(&**topic)
                    .bind(key(*k))
                    .execute(&mut *tx)
                    .await?;
            }
            Change::ConnOpen { session, user } => {
                sqlx::query(
                    "INSERT INTO cluster_conns (session, node, usr) VALUES ($1, $2, $3) \
                     ON CONFLICT (session) DO UPDATE SET node = excluded.node, usr = excluded.usr",
                )
                .bind(&**session)
                .bind(&*p.node)
                .bind(&**user)
                .execute(&mut *tx)
                .await?;
            }
            Change::ConnClose { session } => {
                sqlx::query("DELETE FROM cluster_conns WHERE session = $1")
                    .bind(&**session)
                    .execute(&mut *tx)
                    .await?;
            }
            Change::Info {
                topic,
                key: k,
                info,
            } => {
                sqlx::query("UPDATE cluster_presence SET info = $3 WHERE topic = $1 AND key = $2")
                    .bind(&**topic)
                    .bind(key(*k))
                    .bind(info.as_deref())
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Merges this node's members (`local`, by connection id) and the other
/// nodes' (`remote`, by key) into one page of at most `limit` members and
/// about `max_bytes`; returns it and the cursor of the next page.
pub fn merge_page(
    tag: u64,
    local: Vec<(ConnId, Member)>,
    remote: Vec<(u64, Member)>,
    limit: usize,
    max_bytes: usize,
) -> (Vec<Member>, Option<u64>) {
    let mut all: Vec<(u64, Member)> = local
        .into_iter()
        .map(|(id, m)| (member_key(tag, id), m))
        .chain(remote)
        .collect();
    all.sort_by_key(|(k, _)| *k);
    let mut page = Vec::with_capacity(limit.min(all.len()));
    let mut bytes = 0;
    for (k, m) in all {
        let size = 32 + m.session.len() + m.user.len() + m.info.as_ref().map_or(0, |i| i.len());
        if page.len() == limit || (!page.is_empty() && bytes + size > max_bytes) {
            return (page, Some(k));
        }
        bytes += size;
        page.push(m);
    }
    (page, None)
}

/// The first connection id of this node's block at or after `cursor`, or
/// `None` when the cursor is past the block.
pub fn local_from(tag: u64, cursor: u64) -> Option<ConnId> {
    let start = tag << CONN_BITS;
    let end = (tag + 1) << CONN_BITS;
    if cursor <= start {
        Some(0)
    } else if cursor < end {
        Some(cursor - start)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member {
            session: s.into(),
            user: "u".into(),
            info: None,
        }
    }

    #[test]
    fn keys_order_nodes_then_connections_and_fit_in_an_i64() {
        let (a, b) = (node_tag("n1"), node_tag("n2"));
        assert_ne!(a, b);
        assert!(member_key((1 << 23) - 1, (1 << 40) - 1) <= i64::MAX as u64);
        assert!(member_key(a, 5) < member_key(a, 6));
        assert_eq!(local_from(a, 0), Some(0));
        assert_eq!(local_from(a, member_key(a, 7)), Some(7));
        assert_eq!(local_from(a, member_key(a + 1, 0)), None);
    }

    #[test]
    fn pages_merge_nodes_in_key_order_and_continue_from_the_cursor() {
        let tag = 2;
        let local = vec![(1, m("l1")), (9, m("l9"))];
        let remote = vec![
            (member_key(1, 4), m("r-low")),
            (member_key(3, 1), m("r-high")),
        ];
        let (page, next) = merge_page(tag, local.clone(), remote.clone(), 2, 1 << 20);
        let names: Vec<&str> = page.iter().map(|m| m.session.as_str()).collect();
        assert_eq!(names, ["r-low", "l1"]);
        assert_eq!(next, Some(member_key(2, 9)));
        // The next page, from that cursor.
        let from = local_from(tag, next.unwrap()).unwrap();
        let local: Vec<_> = local.into_iter().filter(|(id, _)| *id >= from).collect();
        let remote: Vec<_> = remote
            .into_iter()
            .filter(|(k, _)| *k >= next.unwrap())
            .collect();
        let (page, next) = merge_page(tag, local, remote, 2, 1 << 20);
        let names: Vec<&str> = page.iter().map(|m| m.session.as_str()).collect();
        assert_eq!((names, next), (vec!["l9", "r-high"], None));
        // A budget smaller than one member still makes progress.
        let (page, next) = merge_page(tag, vec![(1, m("a")), (2, m("b"))], vec![], 10, 1);
        assert_eq!((page.len(), next), (1, Some(member_key(2, 2))));
    }
}
