//! Databases for tests of durable streams: a SQLite file in a temporary
//! data directory always, and a fresh PostgreSQL database when
//! `PLEXUS_TEST_POSTGRES_URL` is set (created per test, dropped when the
//! [`TestDb`] is dropped). A hub started on a [`TestDb`] can be shut down
//! and started again on the same data (restart tests, crash tests).

use std::path::Path;

use plexus_server::Config;
use plexus_server::streams::{NamespaceConfig, StreamsConfig};
use sqlx::Connection;

use crate::TestHub;

/// The environment variable naming the PostgreSQL server for tests.
pub const PG_ENV: &str = "PLEXUS_TEST_POSTGRES_URL";

/// One test's database.
#[derive(Debug)]
pub struct TestDb {
    name: &'static str,
    url: String,
    dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

#[derive(Debug)]
struct PgDatabase {
    admin_url: String,
    database: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, db) = (self.admin_url.clone(), self.database.clone());
        // Dropped from async tests too: use a runtime of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::Executor::execute(
                        &mut c,
                        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str(),
                    )
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

impl TestDb {
    /// A fresh SQLite file (`plexus.db` in a temporary data directory).
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("a temporary directory");
        TestDb {
            name: "sqlite",
            url: String::new(),
            dir,
            pg: None,
        }
    }

    /// A fresh PostgreSQL database, if `PLEXUS_TEST_POSTGRES_URL` is set.
    pub async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
        let database = format!("plexus_t_{:016x}", rand_u64());
        let mut c = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("PLEXUS_TEST_POSTGRES_URL is reachable");
        sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {database}").as_str())
            .await
            .expect("CREATE DATABASE");
        let _ = c.close().await;
        let url = with_database(&admin_url, &database);
        Some(TestDb {
            name: "postgres",
            url,
            dir: tempfile::tempdir().expect("a temporary directory"),
            pg: Some(PgDatabase {
                admin_url,
                database,
            }),
        })
    }

    /// SQLite, and PostgreSQL when configured (printing `skipped`
    /// otherwise): run a test once on each.
    pub async fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        match TestDb::postgres().await {
            Some(pg) => v.push(pg),
            None => println!("postgres: skipped ({PG_ENV} not set)"),
        }
        v
    }

    /// `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `--database-url` (empty for the default SQLite file).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Points `config` at this database (record sync on).
    pub fn apply(&self, config: &mut Config) {
        config.data_dir = self.dir.path().to_owned();
        config.database_url = self.url.clone();
        config.sync.enabled = true;
    }
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let host = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(q) => format!("{scheme}://{host}/{database}?{q}"),
        None => format!("{scheme}://{host}/{database}"),
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A streams configuration with one namespace per pattern (no retention
/// limits, fsynced).
pub fn streams_config(patterns: &[&str]) -> StreamsConfig {
    StreamsConfig {
        streams: patterns.iter().map(|p| NamespaceConfig::new(*p)).collect(),
        ..StreamsConfig::default()
    }
}

impl TestHub {
    /// Starts a hub on `db` with `streams`, adjusted by `tweak`.
    pub async fn start_durable(
        db: &TestDb,
        streams: StreamsConfig,
        tweak: impl FnOnce(&mut Config),
    ) -> TestHub {
        TestHub::start(|c| {
            db.apply(c);
            c.streams = streams;
            tweak(c);
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
