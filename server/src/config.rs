//! Configuration: command-line flags, `PLEXUS_*` environment variables, an
//! optional TOML file, and documented defaults, in that order of precedence.
//!
//! Every setting is declared once, in [`Settings`], whose fields are all
//! optional; [`Config::resolve`] layers the command line (which clap has
//! already merged with the environment) over the file over the defaults.
//! `docs/operations.md` lists every setting with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `25s`, `1h`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = humantime::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The signing algorithm for HMAC keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum HmacAlgName {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

macro_rules! settings {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $default:expr, $long:literal, $env:literal; )*) => {
        /// Every setting, each optional: what one layer (command line plus
        /// environment, or the TOML file) says.
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Settings {
            $(
                $(#[$doc])*
                #[arg(long = $long, env = $env, global = true)]
                pub $field: Option<$ty>,
            )*
        }

        /// The effective configuration.
        #[derive(Debug, Clone, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub struct Config {
            $( $(#[$doc])* pub $field: $ty, )*
            /// The durable namespaces (`[[streams]]`) and the writer's
            /// settings (`[storage]`): config file only, shown by
            /// `plexus config` after the flags.
            #[serde(skip)]
            pub streams: crate::streams::StreamsConfig,
            /// Record sync (`[sync]`): config file only, shown by `plexus
            /// config` after the streams tables.
            #[serde(skip)]
            pub sync: SyncSettings,
            /// Routed RPC (`[rpc]`): config file only, shown by `plexus
            /// config` after the sync table.
            #[serde(skip)]
            pub rpc: RpcSettings,
            /// The HTTP surface (`[http]`, API keys included): config file
            /// only, shown by `plexus config` (secrets masked) after the rpc
            /// table.
            #[serde(skip)]
            pub http: HttpSettings,
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* streams: Default::default(), sync: Default::default(), rpc: Default::default(), http: Default::default() }
            }
        }

        impl Config {
            /// Layers `cli` over `file` over the defaults (the streams
            /// settings come from the file only: see [`FileConfig`]).
            pub fn resolve(cli: Settings, file: Settings) -> Config {
                let d = Config::default();
                Config {
                    $( $field: cli.$field.or(file.$field).unwrap_or(d.$field), )*
                    streams: d.streams,
                    sync: d.sync,
                    rpc: d.rpc,
                    http: d.http,
                }
            }

            /// Layers `cli` over a config file over the defaults.
            pub fn resolve_file(cli: Settings, file: FileConfig) -> Config {
                let mut c = Config::resolve(cli, file.settings);
                c.streams = file.streams;
                c.sync = file.sync;
                c.rpc = file.rpc;
                c.http = file.http;
                c
            }
        }
    };
}

settings! {
    /// Address to listen on [default: 127.0.0.1:7700].
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7700)), "listen", "PLEXUS_LISTEN";
    /// Pending connections the kernel queues before they are accepted; a reconnect storm needs room (the kernel caps it at net.core.somaxconn) [default: 4096].
    listen_backlog: u32 = 4096, "listen-backlog", "PLEXUS_LISTEN_BACKLOG";
    /// Data directory: embedded database and the development key [default: ./data].
    data_dir: PathBuf = PathBuf::from("./data"), "data-dir", "PLEXUS_DATA_DIR";
    /// HMAC secret for JWTs. When no key is configured at all, a development
    /// key is generated in the data directory on first start.
    jwt_secret: String = String::new(), "jwt-secret", "PLEXUS_JWT_SECRET";
    /// HMAC algorithm for --jwt-secret [default: HS256].
    jwt_hmac_alg: HmacAlgName = HmacAlgName::HS256, "jwt-hmac-alg", "PLEXUS_JWT_HMAC_ALG";
    /// PEM file with the public key for RS256, ES256 or EdDSA tokens.
    jwt_public_key: PathBuf = PathBuf::new(), "jwt-public-key", "PLEXUS_JWT_PUBLIC_KEY";
    /// JWKS URL to fetch verification keys from (selected by `kid`).
    jwks_url: String = String::new(), "jwks-url", "PLEXUS_JWKS_URL";
    /// How often to refresh the JWKS [default: 5m].
    jwks_refresh: Dur = Dur(Duration::from_secs(300)), "jwks-refresh", "PLEXUS_JWKS_REFRESH";
    /// Timeout of one JWKS fetch [default: 5s].
    jwks_timeout: Dur = Dur(Duration::from_secs(5)), "jwks-timeout", "PLEXUS_JWKS_TIMEOUT";
    /// Required `iss` claim, if set.
    jwt_issuer: String = String::new(), "jwt-issuer", "PLEXUS_JWT_ISSUER";
    /// Required `aud` claim, if set.
    jwt_audience: String = String::new(), "jwt-audience", "PLEXUS_JWT_AUDIENCE";
    /// Clock leeway for `exp` and `nbf` [default: 5s].
    jwt_leeway: Dur = Dur(Duration::from_secs(5)), "jwt-leeway", "PLEXUS_JWT_LEEWAY";
    /// Deadline for a successful `auth`, counted from the connection's start, whether or not an `auth` is being verified [default: 10s].
    auth_timeout: Dur = Dur(Duration::from_secs(10)), "auth-timeout", "PLEXUS_AUTH_TIMEOUT";
    /// How long before expiry `token.expiring` is sent (at most a quarter of the token's remaining life) [default: 60s].
    token_expiring_lead: Dur = Dur(Duration::from_secs(60)), "token-expiring-lead", "PLEXUS_TOKEN_EXPIRING_LEAD";
    /// Comma-separated Origin allow-list for browser clients; empty allows any [default: empty].
    allowed_origins: String = String::new(), "allowed-origins", "PLEXUS_ALLOWED_ORIGINS";
    /// Largest frame after auth, in bytes [default: 1048576].
    max_frame_size: usize = 1024 * 1024, "max-frame-size", "PLEXUS_MAX_FRAME_SIZE";
    /// Largest frame before auth, in bytes, enforced on the frame header; at least 16384 [default: 16384].
    max_preauth_frame_size: usize = 16 * 1024, "max-preauth-frame-size", "PLEXUS_MAX_PREAUTH_FRAME_SIZE";
    /// Deepest CBOR nesting in a frame, 16 to 256 [default: 32].
    max_depth: u16 = 32, "max-depth", "PLEXUS_MAX_DEPTH";
    /// Most requests in flight per connection, every method counted from arrival to its answer [default: 1024].
    max_in_flight: usize = 1024, "max-in-flight", "PLEXUS_MAX_IN_FLIGHT";
    /// Most bytes of request frames in flight per connection, the new one included [default: 8388608].
    max_in_flight_bytes: usize = 8 * 1024 * 1024, "max-in-flight-bytes", "PLEXUS_MAX_IN_FLIGHT_BYTES";
    /// Most subscriptions per connection [default: 1024].
    max_subscriptions: usize = 1024, "max-subscriptions", "PLEXUS_MAX_SUBSCRIPTIONS";
    /// Longest topic or pattern, in bytes, at most 1024 [default: 256].
    max_topic_len: usize = 256, "max-topic-len", "PLEXUS_MAX_TOPIC_LEN";
    /// Largest publish payload, in encoded bytes [default: 262144].
    max_payload: usize = 256 * 1024, "max-payload", "PLEXUS_MAX_PAYLOAD";
    /// Largest presence info, in encoded bytes [default: 1024].
    max_presence_info: usize = 1024, "max-presence-info", "PLEXUS_MAX_PRESENCE_INFO";
    /// Largest page of `presence.get` [default: 1000].
    max_presence_page: usize = 1000, "max-presence-page", "PLEXUS_MAX_PRESENCE_PAGE";
    /// Outbound queue budget per connection, in bytes; past it the connection is closed as a slow consumer [default: 4194304].
    max_outbound_bytes: usize = 4 * 1024 * 1024, "max-outbound-bytes", "PLEXUS_MAX_OUTBOUND_BYTES";
    /// Most connections per user [default: 64].
    max_connections_per_user: usize = 64, "max-connections-per-user", "PLEXUS_MAX_CONNECTIONS_PER_USER";
    /// Most connections in total [default: 100000].
    max_connections: usize = 100_000, "max-connections", "PLEXUS_MAX_CONNECTIONS";
    /// Sustained requests per second per connection [default: 100].
    rate_per_sec: u32 = 100, "rate-per-sec", "PLEXUS_RATE_PER_SEC";
    /// Request burst above the sustained rate [default: 200].
    rate_burst: u32 = 200, "rate-burst", "PLEXUS_RATE_BURST";
    /// Requests rejected as rate-limited in a row before the connection is closed [default: 50].
    rate_strikes: u32 = 50, "rate-strikes", "PLEXUS_RATE_STRIKES";
    /// Interval of WebSocket pings [default: 25s].
    ping_interval: Dur = Dur(Duration::from_secs(25)), "ping-interval", "PLEXUS_PING_INTERVAL";
    /// How long to wait for a pong before closing with 4010 [default: 10s].
    pong_timeout: Dur = Dur(Duration::from_secs(10)), "pong-timeout", "PLEXUS_PONG_TIMEOUT";
    /// Server-side limit on one request's run time [default: 30s].
    request_timeout: Dur = Dur(Duration::from_secs(30)), "request-timeout", "PLEXUS_REQUEST_TIMEOUT";
    /// WebSocket read buffer per connection, in bytes; it grows for larger frames [default: 1024].
    ws_read_buffer: usize = 1024, "ws-read-buffer", "PLEXUS_WS_READ_BUFFER";
    /// WebSocket write batch per connection, in bytes: frames are gathered up to this size per write; the buffer only grows this large while a connection is busy [default: 16384].
    ws_write_buffer: usize = 16 * 1024, "ws-write-buffer", "PLEXUS_WS_WRITE_BUFFER";
    /// Kernel send buffer per accepted socket (SO_SNDBUF), in bytes; 0 keeps the kernel's autotuning [default: 0].
    tcp_send_buffer: usize = 0, "tcp-send-buffer", "PLEXUS_TCP_SEND_BUFFER";
    /// Deadline for draining connections on shutdown [default: 10s].
    shutdown_grace: Dur = Dur(Duration::from_secs(10)), "shutdown-grace", "PLEXUS_SHUTDOWN_GRACE";
    /// After sending its Close frame, how long the hub keeps reading and discarding until the client's Close or EOF (at most 1 MiB), so the client is not reset [default: 2s].
    close_linger: Dur = Dur(Duration::from_secs(2)), "close-linger", "PLEXUS_CLOSE_LINGER";
    /// Reconnect hint sent in `closing` on shutdown [default: 2s].
    shutdown_retry_hint: Dur = Dur(Duration::from_secs(2)), "shutdown-retry-hint", "PLEXUS_SHUTDOWN_RETRY_HINT";
    /// Database of the durable streams: `sqlite:PATH` or `postgres://…`; empty means the SQLite file `plexus.db` in the data directory (created, WAL). Opened only when a `[[streams]]` namespace is configured [default: empty].
    database_url: String = String::new(), "database-url", "PLEXUS_DATABASE_URL";
    /// Do not apply the database migrations on start: a database whose migrations are behind then fails to open (run `plexus migrate`) [default: false].
    no_migrate: bool = false, "no-migrate", "PLEXUS_NO_MIGRATE";
    /// Read connections of the database pool (catch-up, history) [default: 4].
    database_read_connections: u32 = 4, "database-read-connections", "PLEXUS_DATABASE_READ_CONNECTIONS";
    /// Cluster mode: the NATS server that carries traffic between the hubs of one cluster (`nats://host:port`); empty runs one hub alone. Needs a PostgreSQL `--database-url` shared by every node (docs/cluster.md) [default: empty].
    cluster: String = String::new(), "cluster", "PLEXUS_CLUSTER";
    /// Cluster mode: this node's id, unique in the cluster and the prefix of its session ids (1 to 8 of `a-z0-9_-`); empty picks a random one on every start [default: empty].
    node_id: String = String::new(), "node-id", "PLEXUS_NODE_ID";
    /// Cluster mode: the first token of every NATS subject the cluster uses, so that several clusters can share one NATS server [default: plexus].
    cluster_prefix: String = "plexus".to_owned(), "cluster-prefix", "PLEXUS_CLUSTER_PREFIX";
    /// Cluster mode: how often a node says it is alive (in PostgreSQL) [default: 1s].
    cluster_heartbeat: Dur = Dur(Duration::from_secs(1)), "cluster-heartbeat", "PLEXUS_CLUSTER_HEARTBEAT";
    /// Cluster mode: a node not heard of for this long counts as dead: its presence entries are removed (at least three heartbeats) [default: 5s].
    cluster_node_expiry: Dur = Dur(Duration::from_secs(5)), "cluster-node-expiry", "PLEXUS_CLUSTER_NODE_EXPIRY";
    /// Cluster mode: most messages waiting to go out to NATS; past it plain events for other nodes are dropped (counted in plexus_cluster_dropped_total) and durable ones are left to the other nodes' gap filling [default: 65536].
    cluster_outbound_queue: usize = 65536, "cluster-outbound-queue", "PLEXUS_CLUSTER_OUTBOUND_QUEUE";
    /// Serve the `debug.*` methods (tests only; only builds with the debug-methods feature or debug builds have them) [default: false].
    debug_methods: bool = false, "debug-methods", "PLEXUS_DEBUG_METHODS";
}

/// The longest session id the hub assigns (8 hex digits, `-`, up to 16).
pub const MAX_SESSION_ID_LEN: usize = 25;

/// Bytes of an `event` frame besides its topic, data and user, at their
/// longest: `[2, "event", {0: topic, 1: data, 2: from}]`.
pub const EVENT_ENVELOPE: usize = 18;

/// Bytes of a `presence.join` frame besides its topic, user and info, at
/// their longest (the session id included).
pub const PRESENCE_ENVELOPE: usize = 56;

/// Bytes of a `presence.get` response holding one member, besides the
/// member's user and info (the session id included).
pub const PRESENCE_PAGE_ENVELOPE: usize = 59;

/// The smallest pre-auth frame size (decision P12).
pub const MIN_PREAUTH_FRAME_SIZE: usize = 16 * 1024;

/// The range of `max-depth`.
pub const DEPTH_RANGE: std::ops::RangeInclusive<u16> = 16..=256;

/// Settings that cannot work together (decision H1). The message names
/// every setting involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings: {}", .problems.join("; "))]
pub struct SettingsError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML file is invalid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: toml::de::Error,
    },
    /// The `[storage]` or `[[streams]]` tables are invalid.
    #[error("invalid config file {path}: {source}")]
    Streams {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: crate::streams::config::ConfigError,
    },
}

/// What a config file says: the flags' settings and the streams tables.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// The top-level keys (the same names as the flags).
    pub settings: Settings,
    /// `[storage]` and `[[streams]]`.
    pub streams: crate::streams::StreamsConfig,
    /// `[sync]`.
    pub sync: SyncSettings,
    /// `[rpc]`.
    pub rpc: RpcSettings,
    /// `[http]`.
    pub http: HttpSettings,
}

/// The config file's tables that are not flags.
const STREAMS_TABLES: [&str; 2] = ["storage", "streams"];

/// Parses a config file's text: unknown top-level keys are rejected, the
/// `[storage]` and `[[streams]]` tables are read as
/// [`StreamsConfig::from_toml`](crate::streams::StreamsConfig::from_toml)
/// documents them.
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let parse = |source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(parse)?;
    let mut rest = toml::Table::new();
    for name in STREAMS_TABLES {
        if let Some(v) = table.remove(name) {
            rest.insert(name.to_owned(), v);
        }
    }
    let sync: SyncSettings = match table.remove("sync") {
        Some(v) => v.try_into().map_err(parse)?,
        None => SyncSettings::default(),
    };
    let rpc: RpcSettings = match table.remove("rpc") {
        Some(v) => v.try_into().map_err(parse)?,
        None => RpcSettings::default(),
    };
    let http: HttpSettings = match table.remove("http") {
        Some(v) => v.try_into().map_err(parse)?,
        None => HttpSettings::default(),
    };
    let settings: Settings = toml::Value::Table(table).try_into().map_err(parse)?;
    let streams =
        crate::streams::StreamsConfig::from_toml(&rest.to_string()).map_err(|source| {
            ConfigError::Streams {
                path: path.to_owned(),
                source,
            }
        })?;
    Ok(FileConfig {
        settings,
        streams,
        sync,
        rpc,
        http,
    })
}

/// Reads a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

impl Config {
    /// Checks that the settings can work together (decision H1): every
    /// frame the hub may send fits the announced `max-frame-size`, and the
    /// limits are in their ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut problems = Vec::new();
        let frame = self.max_frame_size;
        let user = crate::auth::MAX_SUBJECT_LEN;
        let topic_max = plexus_protocol::topic::MAX_TOPIC_LEN;
        if self.max_topic_len == 0 || self.max_topic_len > topic_max {
            problems.push(format!(
                "max-topic-len ({}) must be 1 to {topic_max}",
                self.max_topic_len
            ));
        }
        if self.max_preauth_frame_size < MIN_PREAUTH_FRAME_SIZE {
            problems.push(format!(
                "max-preauth-frame-size ({}) must be at least {MIN_PREAUTH_FRAME_SIZE}",
                self.max_preauth_frame_size
            ));
        }
        if !DEPTH_RANGE.contains(&self.max_depth) {
            problems.push(format!(
                "max-depth ({}) must be {} to {}",
                self.max_depth,
                DEPTH_RANGE.start(),
                DEPTH_RANGE.end()
            ));
        }
        if self.max_in_flight_bytes < frame {
            problems.push(format!(
                "max-in-flight-bytes ({}) must be at least max-frame-size ({frame})",
                self.max_in_flight_bytes
            ));
        }
        if self.max_outbound_bytes < frame.saturating_mul(2) {
            problems.push(format!(
                "max-outbound-bytes ({}) must be at least twice max-frame-size ({frame})",
                self.max_outbound_bytes
            ));
        }
        let event = self
            .max_payload
            .saturating_add(self.max_topic_len)
            .saturating_add(user)
            .saturating_add(EVENT_ENVELOPE);
        if event > frame {
            problems.push(format!(
                "an event can take {event} bytes (max-payload {} + max-topic-len {} + a {user}-byte user + {EVENT_ENVELOPE}), more than max-frame-size ({frame})",
                self.max_payload, self.max_topic_len
            ));
        }
        let notice = self
            .max_presence_info
            .saturating_add(self.max_topic_len)
            .saturating_add(user)
            .saturating_add(PRESENCE_ENVELOPE);
        let page = self
            .max_presence_info
            .saturating_add(user)
            .saturating_add(PRESENCE_PAGE_ENVELOPE);
        if notice.max(page) > frame {
            problems.push(format!(
                "a presence notice can take {} bytes (max-presence-info {} + max-topic-len {} + a {user}-byte user + {PRESENCE_ENVELOPE}), more than max-frame-size ({frame})",
                notice.max(page),
                self.max_presence_info,
                self.max_topic_len
            ));
        }
        for (name, value) in [
            ("max-in-flight", self.max_in_flight),
            ("max-subscriptions", self.max_subscriptions),
            ("max-presence-page", self.max_presence_page),
            ("max-connections-per-user", self.max_connections_per_user),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            problems.push("rate-per-sec and rate-burst must be at least 1".to_owned());
        }
        if self.database_read_connections == 0 {
            problems.push("database-read-connections must be at least 1".to_owned());
        }
        if let Err(e) = self.store_options().backend() {
            problems.push(format!("database-url: {e}"));
        }
        if !self.cluster.is_empty() {
            problems.extend(self.cluster_problems());
        }
        if self.node_id.len() > 8
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            problems.push("node-id must be 1 to 8 of a-z, 0-9, _ and -".to_owned());
        }
        if let Err(e) = self.streams.validate() {
            problems.push(e.to_string());
        }
        if !self.streams.streams.is_empty() {
            use crate::session::methods::streams::{DURABLE_EVENT_EXTRA, STREAM_ENVELOPE};
            let durable = event
                .saturating_add(DURABLE_EVENT_EXTRA)
                .saturating_add(STREAM_ENVELOPE);
            if durable > frame {
                problems.push(format!(
                    "a durable event in a catch-up chunk can take {durable} bytes (max-payload {} + max-topic-len {} + a {user}-byte user + {}), more than max-frame-size ({frame})",
                    self.max_payload,
                    self.max_topic_len,
                    EVENT_ENVELOPE + DURABLE_EVENT_EXTRA + STREAM_ENVELOPE
                ));
            }
        }
        problems.extend(self.sync.problems(self.max_frame_size));
        problems.extend(self.rpc.problems());
        problems.extend(self.http.problems());
        if self.listen_backlog == 0 {
            problems.push("listen-backlog must be at least 1".to_owned());
        }
        if self.debug_methods && !crate::session::methods::DEBUG_METHODS_COMPILED {
            problems.push(
                "debug-methods is set, but this build has no debug methods (build with --features debug-methods)"
                    .to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SettingsError { problems })
        }
    }

    /// Whether this hub runs in cluster mode (`--cluster`).
    pub fn clustered(&self) -> bool {
        !self.cluster.is_empty()
    }

    fn cluster_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.cluster.starts_with("nats://") || self.cluster.starts_with("tls://")) {
            p.push("cluster must be a nats:// (or tls://) URL".to_owned());
        }
        if !matches!(
            self.store_options().backend(),
            Ok(crate::storage::Backend::Postgres)
        ) {
            p.push("cluster needs a postgres:// database-url shared by every node".to_owned());
        }
        if self.cluster_prefix.is_empty()
            || !self
                .cluster_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            p.push("cluster-prefix must be one token of A-Z, a-z, 0-9, _ and -".to_owned());
        }
        if self.cluster_heartbeat.0.is_zero()
            || self.cluster_node_expiry.0 < self.cluster_heartbeat.0 * 3
        {
            p.push(
                "cluster-node-expiry must be at least three cluster-heartbeat (which is not 0)"
                    .to_owned(),
            );
        }
        if self.cluster_outbound_queue == 0 {
            p.push("cluster-outbound-queue must be at least 1".to_owned());
        }
        p
    }

    /// The database options: `--database-url`, or the SQLite file in the
    /// data directory.
    pub fn store_options(&self) -> crate::storage::StoreOptions {
        let mut o = if self.database_url.is_empty() {
            crate::storage::StoreOptions::in_data_dir(&self.data_dir)
        } else {
            crate::storage::StoreOptions::new(self.database_url.clone())
        };
        o.migrate = !self.no_migrate;
        o.read_connections = self.database_read_connections;
        o
    }

    /// Where the database is, with any password masked (for logs and
    /// `plexus config`).
    pub fn database_display(&self) -> String {
        mask_url(&self.store_options().url)
    }

    /// The Origin allow-list, parsed.
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The configuration as TOML with secrets masked, for `plexus config`.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        if !c.jwt_secret.is_empty() {
            c.jwt_secret = "********".into();
        }
        // A JWKS URL may carry credentials in its user info or query.
        if let Some((base, _)) = c.jwks_url.split_once('?') {
            c.jwks_url = format!("{base}?********");
        }
        if let Some((scheme, rest)) = c.jwks_url.split_once("://")
            && let Some((_, host)) = rest.split_once('@')
        {
            c.jwks_url = format!("{scheme}://********@{host}");
        }
        if !c.database_url.is_empty() {
            c.database_url = mask_url(&c.database_url);
        }
        if !c.cluster.is_empty() {
            c.cluster = mask_url(&c.cluster);
        }
        let mut out =
            toml::to_string(&c).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"));
        out.push_str(&self.streams.to_toml());
        out.push_str(&self.sync.to_toml());
        out.push_str(&self.rpc.to_toml());
        out.push_str(&self.http.to_masked_toml());
        out
    }
}

/// The least record size `max-frame-size` must leave room for when record
/// sync is on.
pub const MIN_SYNC_RECORD_BYTES: usize = 1024;

/// The `[sync]` table: record sync (issue 11, decisions Y1–Y20). Every key
/// is optional; `docs/operations.md` ("Record sync") lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncSettings {
    /// Serve `sync.push`, `sync.pull` and `sync.info` (the database is
    /// opened at start) [default: true] (Y17).
    pub enabled: bool,
    /// How far ahead of the hub's clock a client timestamp may be [default: 1m].
    pub max_clock_skew: Dur,
    /// How long tombstones are kept [default: 30days].
    pub tombstone_horizon: Dur,
    /// How often expired records and old tombstones are swept [default: 1m].
    pub sweep_interval: Dur,
    /// Most records one sweep round expires or purges [default: 1000].
    pub sweep_limit: u32,
    /// Most live records per space [default: 100000].
    pub max_records: u64,
    /// Most bytes of live records per space [default: 67108864].
    pub max_bytes: u64,
    /// Pushes waiting for the writer; a full queue answers `unavailable` [default: 1024].
    pub queue_capacity: usize,
    /// Most pushes per transaction [default: 64].
    pub max_batch: usize,
    /// Most operations per push [default: 1000].
    pub max_ops: usize,
    /// Largest record (collection + id + field names and values); capped at what one pull chunk of max-frame-size can carry [default: 262144].
    pub max_record_bytes: usize,
    /// Most collections per space; capped at what one frame of max-frame-size can list (a pull's final chunk, a `sync.info` result) [default: 1024].
    pub max_collections: usize,
    /// Most records per pull page [default: 500].
    pub page_limit: u32,
    /// Commits buffered per live pull; one further behind ends with `unavailable` [default: 1024].
    pub live_buffer: usize,
    /// Per-space-pattern quotas (`[[sync.quotas]]`), the first match wins [default: none].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<SyncQuota>,
}

/// A `[[sync.quotas]]` entry: the quota of the spaces matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyncQuota {
    /// The spaces (a topic pattern).
    pub pattern: String,
    /// Most live records per space [default: `[sync] max-records`].
    pub max_records: Option<u64>,
    /// Most bytes of live records per space [default: `[sync] max-bytes`].
    pub max_bytes: Option<u64>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings::from_engine(&crate::sync::SyncConfig::default())
    }
}

impl SyncSettings {
    fn from_engine(c: &crate::sync::SyncConfig) -> Self {
        SyncSettings {
            enabled: true,
            max_clock_skew: Dur(c.max_clock_skew),
            tombstone_horizon: Dur(c.tombstone_horizon),
            sweep_interval: Dur(c.sweep_interval),
            sweep_limit: c.sweep_limit,
            max_records: c.max_records,
            max_bytes: c.max_bytes,
            queue_capacity: c.queue_capacity,
            max_batch: c.max_batch,
            max_ops: c.max_ops,
            max_record_bytes: c.max_record_bytes,
            max_collections: c.max_collections,
            page_limit: c.page_limit,
            live_buffer: c.live_buffer,
            quotas: Vec::new(),
        }
    }

    /// The engine's settings, for frames of `max_frame_size`: the record
    /// limit is at most what one pull chunk can carry (decision Y19).
    pub fn engine(&self, max_frame_size: usize) -> crate::sync::SyncConfig {
        let fits = crate::session::methods::sync::record_bytes_that_fit(max_frame_size);
        crate::sync::SyncConfig {
            max_clock_skew: self.max_clock_skew.0,
            tombstone_horizon: self.tombstone_horizon.0,
            sweep_interval: self.sweep_interval.0,
            sweep_limit: self.sweep_limit,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            max_ops: self.max_ops,
            max_record_bytes: self.max_record_bytes.min(fits),
            max_collections: self.max_collections.min(
                crate::session::methods::sync::collections_that_fit(max_frame_size),
            ),
            page_limit: self.page_limit,
            live_buffer: self.live_buffer,
            quotas: self
                .quotas
                .iter()
                .filter_map(|q| {
                    let p = plexus_protocol::topic::Pattern::parse(
                        &q.pattern,
                        plexus_protocol::topic::MAX_TOPIC_LEN,
                    )
                    .ok()?;
                    let l = plexus_protocol::methods::sync::Limits::new(
                        q.max_records.unwrap_or(self.max_records),
                        q.max_bytes.unwrap_or(self.max_bytes),
                    );
                    Some((p, l))
                })
                .collect(),
        }
    }

    /// What is wrong with these settings for frames of `max_frame_size`.
    pub fn problems(&self, max_frame_size: usize) -> Vec<String> {
        let mut p = Vec::new();
        if !self.enabled {
            return p;
        }
        let positive = [
            ("queue-capacity", self.queue_capacity),
            ("max-batch", self.max_batch),
            ("max-ops", self.max_ops),
            ("max-record-bytes", self.max_record_bytes),
            ("max-collections", self.max_collections),
            ("page-limit", self.page_limit as usize),
            ("live-buffer", self.live_buffer),
            ("sweep-limit", self.sweep_limit as usize),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("[sync] {name} must be at least 1"));
            }
        }
        for q in &self.quotas {
            if let Err(e) = plexus_protocol::topic::Pattern::parse(
                &q.pattern,
                plexus_protocol::topic::MAX_TOPIC_LEN,
            ) {
                p.push(format!("[[sync.quotas]] pattern {:?}: {e}", q.pattern));
            }
        }
        if self.sweep_interval.0.is_zero() {
            p.push("[sync] sweep-interval must be positive".to_owned());
        }
        let fits = crate::session::methods::sync::record_bytes_that_fit(max_frame_size);
        if fits < MIN_SYNC_RECORD_BYTES {
            p.push(format!(
                "[sync] max-frame-size ({max_frame_size}) leaves {fits} bytes for a record in a pull chunk, less than {MIN_SYNC_RECORD_BYTES}: raise max-frame-size or set [sync] enabled = false"
            ));
        }
        p
    }

    /// The table as TOML, for `plexus config`.
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        if let Ok(v) = toml::Value::try_from(self) {
            t.insert("sync".to_owned(), v);
        }
        format!("\n{}", toml::to_string(&t).unwrap_or_default())
    }
}

/// A URL with the password of its user info and its query masked.
pub fn mask_url(url: &str) -> String {
    let mut u = url.to_owned();
    if let Some((base, _)) = u.split_once('?') {
        u = format!("{base}?********");
    }
    if let Some((scheme, rest)) = u.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        u = format!("{scheme}://{user}:********@{host}");
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_mode_needs_nats_and_a_shared_postgres() {
        let mut c = Config {
            cluster: "nats://127.0.0.1:4222".into(),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cluster needs a postgres://"), "{e}");
        c.database_url = "postgres://u:pw@db/plexus".into();
        c.validate().unwrap();
        assert!(c.clustered());
        c.cluster = "redis://x".into();
        c.node_id = "Node-1".into();
        c.cluster_node_expiry = Dur(Duration::from_secs(2));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("nats://"), "{e}");
        assert!(e.contains("node-id"), "{e}");
        assert!(e.contains("cluster-node-expiry"), "{e}");
        let shown = Config {
            cluster: "nats://u:secret@n:4222".into(),
            database_url: "postgres://db/p".into(),
            ..Config::default()
        }
        .to_masked_toml();
        assert!(
            shown.contains("cluster = \"nats://u:********@n:4222\""),
            "{shown}"
        );
    }

    #[test]
    fn the_rpc_table_is_read_and_checked() {
        let path = Path::new("plexus.toml");
        let f = parse_file(path, "[rpc]\nmax-queue = 8\nchunk-window = 2\n").unwrap();
        assert_eq!((f.rpc.max_queue, f.rpc.chunk_window), (8, 2));
        assert_eq!(f.rpc.default_concurrency, 16);
        assert!(parse_file(path, "[rpc]\nno-such = 1\n").is_err());
        let mut c = Config::resolve_file(Settings::default(), f);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        c.rpc.max_concurrency = MAX_RPC_CONCURRENCY + 1;
        c.rpc.chunk_window = 0;
        let e = c.validate().unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.contains("max-concurrency")),
            "{e}"
        );
        assert!(e.problems.iter().any(|p| p.contains("chunk-window")), "{e}");
        assert!(c.to_masked_toml().contains("[rpc]"));
    }

    #[test]
    fn cli_beats_file_beats_default() {
        let cli = Settings {
            max_in_flight: Some(5),
            ..Default::default()
        };
        let file: Settings =
            toml::from_str("max-in-flight = 7\nmax-payload = 99\nping-interval = \"3s\"").unwrap();
        let c = Config::resolve(cli, file);
        assert_eq!(c.max_in_flight, 5);
        assert_eq!(c.max_payload, 99);
        assert_eq!(c.ping_interval, Dur(Duration::from_secs(3)));
        assert_eq!(c.max_subscriptions, 1024);
    }

    #[test]
    fn the_file_holds_flags_and_the_streams_tables() {
        let path = Path::new("plexus.toml");
        let f = parse_file(
            path,
            "max-payload = 99\ndatabase-url = \"postgres://u:pw@db/plexus\"\n\
             [storage]\ncommit-max-batch = 8\n\
             [[streams]]\npattern = \"orders.>\"\nmax-events = 10\n",
        )
        .unwrap();
        let c = Config::resolve_file(Settings::default(), f);
        assert_eq!(c.max_payload, 99);
        assert_eq!(c.streams.storage.commit_max_batch, 8);
        assert_eq!(c.streams.streams[0].max_events, Some(10));
        c.validate().unwrap();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("database-url = \"postgres://u:********@db/plexus\""));
        assert!(shown.contains("[[streams]]\npattern = \"orders.>\"\nmax-events = 10"));
        assert!(shown.contains("commit-max-batch = 8"));
        // The [sync] table, with a quota override.
        let f = parse_file(
            path,
            "[sync]\nmax-records = 5\nsweep-interval = \"10s\"\n\
             [[sync.quotas]]\npattern = \"team.>\"\nmax-records = 50\n",
        )
        .unwrap();
        let c = Config::resolve_file(Settings::default(), f);
        c.validate().unwrap();
        let e = c.sync.engine(c.max_frame_size);
        assert_eq!(e.sweep_interval, Duration::from_secs(10));
        assert_eq!(e.limits_for("user.a").max_records, 5);
        assert_eq!(e.limits_for("team.a.b").max_records, 50);
        assert_eq!(e.limits_for("team.a.b").max_bytes, 64 << 20);
        // Record size and collections are lowered to what one frame holds
        // (Y19, Y22); the default frame holds the defaults.
        assert_eq!(e.max_collections, 1024);
        let small = c.sync.engine(65536);
        assert_eq!(small.max_collections, 339);
        assert!(small.max_record_bytes < 65536);
        let shown = c.to_masked_toml();
        assert!(shown.contains("[sync]\nenabled = true"), "{shown}");
        assert!(shown.contains("max-records = 5"), "{shown}");
        assert!(shown.contains("pattern = \"team.>\""), "{shown}");
        assert!(parse_file(path, "[sync]\nno-such = 1\n").is_err());
        let f = parse_file(path, "[[sync.quotas]]\npattern = \"a..b\"\n").unwrap();
        let bad = Config::resolve_file(Settings::default(), f);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("sync.quotas")
        );
        // The default database is the SQLite file in the data directory.
        let d = Config::default();
        assert_eq!(d.database_display(), "sqlite:./data/plexus.db");
        assert!(d.store_options().migrate);
        // Bad streams tables, unknown keys in them, overlaps, bad URLs.
        for bad in [
            "[[streams]]\npattern = \"a.>\"\n[[streams]]\npattern = \"a.b\"\n",
            "[storage]\nno-such = 1\n",
            "[[streams]]\npattern = \"a\"\nretention = 1\n",
            "[[streams]]\npattern = \"a..b\"\n",
        ] {
            assert!(
                matches!(parse_file(path, bad), Err(ConfigError::Streams { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_file(path, "no-such-key = 1\n"),
            Err(ConfigError::Parse { .. })
        ));
        let c = Config {
            database_url: "mysql://x".into(),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("database-url")
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected_and_secrets_masked() {
        assert!(toml::from_str::<Settings>("no-such-key = 1").is_err());
        let c = Config {
            jwt_secret: "hunter2".into(),
            ..Default::default()
        };
        let shown = c.to_masked_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("jwt-secret = \"********\""));
        let c = Config {
            jwks_url: "https://user:pw@idp.example/keys?token=abc".into(),
            ..Default::default()
        };
        let shown = c.to_masked_toml();
        assert!(!shown.contains("abc") && !shown.contains("pw@"), "{shown}");
    }

    #[test]
    fn http_keys_are_read_from_the_file_checked_and_masked() {
        let text = "[http]\nresume-secret = \"resume-hunter2\"\n\
                    [[http.api-keys]]\nname = \"orders\"\nsecret = \"a-secret-of-24-characters!\"\n\
                    operations = [\"publish\"]\ntopics = [\"orders.*\"]\n";
        let f = parse_file(Path::new("x.toml"), text).unwrap();
        let c = Config::resolve_file(Settings::default(), f);
        c.validate().unwrap();
        assert_eq!(c.http.api_keys[0].name, "orders");
        let shown = c.to_masked_toml();
        assert!(
            !shown.contains("a-secret-of") && !shown.contains("resume-hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("[[http.api-keys]]") && shown.contains("orders"),
            "{shown}"
        );
        // A key that cannot work stops the hub with a message naming it.
        let bad = "[[http.api-keys]]\nname = \"short\"\nsecret = \"x\"\noperations = [\"*\"]\n";
        let c = Config::resolve_file(
            Settings::default(),
            parse_file(Path::new("x.toml"), bad).unwrap(),
        );
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("short") && e.contains("24"), "{e}");
        assert!(parse_file(Path::new("x.toml"), "[http]\nno-such = 1\n").is_err());
    }

    #[test]
    fn the_defaults_are_valid_and_every_rule_names_its_settings() {
        Config::default().validate().unwrap();
        // The case: a 2048-byte frame, 1900 bytes of payload.
        let mut c = Config {
            max_frame_size: 2048,
            max_payload: 1900,
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(
            e.to_string().contains("[sync] max-frame-size (2048)"),
            "{e}"
        );
        c.sync.enabled = false;
        let e = c.validate().unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        let text = e.to_string();
        for name in ["max-payload", "max-topic-len", "max-frame-size"] {
            assert!(text.contains(name), "{name} in {text}");
        }
        let c = Config {
            max_frame_size: 16 * 1024 * 1024,
            ..Default::default()
        };
        let text = c.validate().unwrap_err().to_string();
        for name in ["max-outbound-bytes", "max-in-flight-bytes"] {
            assert!(text.contains(name), "{name} in {text}");
        }
        let bad = Config {
            max_topic_len: 2000,
            max_preauth_frame_size: 512,
            max_depth: 8,
            max_in_flight: 0,
            listen_backlog: 0,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.problems.len(), 5, "{e}");
        let text = e.to_string();
        for name in [
            "max-topic-len",
            "max-preauth-frame-size",
            "max-depth",
            "max-in-flight",
            "listen-backlog",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn the_event_bound_is_exact() {
        use plexus_protocol::frame::encode_notification;
        use plexus_protocol::methods::EventParams;
        let c = Config::default();
        let topic = "t".repeat(c.max_topic_len);
        let user = "u".repeat(crate::auth::MAX_SUBJECT_LEN);
        // A payload item of exactly max_payload encoded bytes.
        let payload = plexus_protocol::RawValue::encode(&minicbor::bytes::ByteVec::from(vec![
            0u8;
            c.max_payload - 5
        ]))
        .unwrap();
        assert_eq!(payload.len(), c.max_payload);
        let frame = encode_notification(
            "event",
            &EventParams::new(&topic, payload.as_raw_ref(), Some(&user)),
        )
        .unwrap();
        assert_eq!(
            frame.len(),
            c.max_payload + c.max_topic_len + user.len() + EVENT_ENVELOPE
        );
    }

    #[test]
    fn the_presence_bounds_hold() {
        use plexus_protocol::frame::{encode_notification, encode_result};
        use plexus_protocol::methods::{Member, PresenceGetResult, PresenceNotice};
        let c = Config::default();
        let info = plexus_protocol::RawValue::encode(&minicbor::bytes::ByteVec::from(vec![
            0u8;
            c.max_presence_info
                - 3
        ]))
        .unwrap();
        assert_eq!(info.len(), c.max_presence_info);
        let member = Member {
            session: "s".repeat(MAX_SESSION_ID_LEN),
            user: "u".repeat(crate::auth::MAX_SUBJECT_LEN),
            info: Some(info),
        };
        let notice = encode_notification(
            "presence.join",
            &PresenceNotice {
                topic: "t".repeat(c.max_topic_len),
                member: member.clone(),
            },
        )
        .unwrap();
        assert_eq!(
            notice.len(),
            c.max_presence_info
                + c.max_topic_len
                + crate::auth::MAX_SUBJECT_LEN
                + PRESENCE_ENVELOPE
        );
        let page = encode_result(
            u64::MAX,
            &PresenceGetResult {
                members: vec![member],
                next: Some(u64::MAX),
            },
        )
        .unwrap();
        assert_eq!(
            page.len(),
            c.max_presence_info + crate::auth::MAX_SUBJECT_LEN + PRESENCE_PAGE_ENVELOPE
        );
    }
}

/// The `[rpc]` table: routed RPC (issue 12, decisions R1–R12). Every key is
/// optional; `docs/operations.md` ("Routed RPC") lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RpcSettings {
    /// A call's deadline when `rpc.call` gives no `timeout_ms` [default: 30s].
    pub default_timeout: Dur,
    /// The longest deadline a call may ask for [default: 5m].
    pub max_timeout: Dur,
    /// Calls in flight per callee when `rpc.register` gives no `max_concurrency` [default: 16].
    pub default_concurrency: u64,
    /// The largest `max_concurrency` a registration may ask for, at most 1024 [default: 1024].
    pub max_concurrency: u64,
    /// Calls queued per procedure while its callees are all busy; past it `too_many_requests` [default: 1024].
    pub max_queue: usize,
    /// Procedures on the hub [default: 10000].
    pub max_procedures: usize,
    /// Registrations per connection [default: 64].
    pub max_registrations_per_conn: usize,
    /// Chunks a streaming callee may send ahead of the caller's reading (its credit window, per call) [default: 16].
    pub chunk_window: u64,
    /// Claim names one registration may ask to be disclosed [default: 16].
    pub max_disclose: usize,
    /// Longest `key` of a call, in bytes [default: 256].
    pub max_key_len: usize,
    /// Most procedures per `rpc.list` page [default: 100].
    pub list_page: usize,
}

/// The hard cap of `[rpc] max-concurrency`: a callee's invocations pass
/// through its session's command queue
/// ([`MAX_COMMANDS`](crate::outbound::MAX_COMMANDS)).
pub const MAX_RPC_CONCURRENCY: u64 = 1024;

impl Default for RpcSettings {
    fn default() -> Self {
        RpcSettings {
            default_timeout: Dur(Duration::from_secs(30)),
            max_timeout: Dur(Duration::from_secs(300)),
            default_concurrency: 16,
            max_concurrency: MAX_RPC_CONCURRENCY,
            max_queue: 1024,
            max_procedures: 10_000,
            max_registrations_per_conn: 64,
            chunk_window: 16,
            max_disclose: 16,
            max_key_len: 256,
            list_page: 100,
        }
    }
}

impl RpcSettings {
    /// What is wrong with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let positive = [
            ("default-concurrency", self.default_concurrency),
            ("max-concurrency", self.max_concurrency),
            ("max-procedures", self.max_procedures as u64),
            (
                "max-registrations-per-conn",
                self.max_registrations_per_conn as u64,
            ),
            ("chunk-window", self.chunk_window),
            ("list-page", self.list_page as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                p.push(format!("[rpc] {name} must be at least 1"));
            }
        }
        if self.max_concurrency > MAX_RPC_CONCURRENCY {
            p.push(format!(
                "[rpc] max-concurrency ({}) must be at most {MAX_RPC_CONCURRENCY}",
                self.max_concurrency
            ));
        }
        if self.default_concurrency > self.max_concurrency {
            p.push(format!(
                "[rpc] default-concurrency ({}) must be at most max-concurrency ({})",
                self.default_concurrency, self.max_concurrency
            ));
        }
        if self.default_timeout.0.is_zero() || self.default_timeout.0 > self.max_timeout.0 {
            p.push("[rpc] default-timeout must be positive and at most max-timeout".to_owned());
        }
        p
    }

    /// The table as `plexus config` shows it.
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        if let Ok(v) = toml::Value::try_from(self) {
            t.insert("rpc".to_owned(), v);
        }
        format!("\n{}", toml::to_string(&t).unwrap_or_default())
    }
}

/// The `[http]` table: the HTTP surface (issue 13, decisions W1–W12).
/// Every key is optional; `docs/http.md` ("Settings") lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSettings {
    /// The server API's keys (`[[http.api-keys]]`); without any, `/v1/api`
    /// answers 404 [default: none].
    pub api_keys: Vec<crate::http::keys::ApiKeyConfig>,
    /// Largest request body, in bytes; 0 means `max-frame-size` [default: 0].
    pub max_body_bytes: usize,
    /// Largest answer of a one-shot call or server API operation that
    /// streams its result, in bytes of chunk data [default: 4194304].
    pub max_answer_bytes: usize,
    /// Operations in one `/v1/api/batch` [default: 100].
    pub max_batch: usize,
    /// Interval of the SSE keepalive comment [default: 15s].
    pub sse_keepalive: Dur,
    /// Topics one SSE stream may subscribe to [default: 16].
    pub sse_max_topics: usize,
    /// The secret SSE resume ids are signed with; empty means one derived
    /// from `jwt-secret` or the development key, else a random one per
    /// process (ids then do not survive a restart) [default: empty].
    pub resume_secret: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            api_keys: Vec::new(),
            max_body_bytes: 0,
            max_answer_bytes: 4 << 20,
            max_batch: 100,
            sse_keepalive: Dur(Duration::from_secs(15)),
            sse_max_topics: 16,
            resume_secret: String::new(),
        }
    }
}

impl HttpSettings {
    /// What is wrong with these settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = crate::http::keys::ApiKeys::new(&self.api_keys) {
            p.push(format!("[http] {e}"));
        }
        for (name, v) in [
            ("max-answer-bytes", self.max_answer_bytes),
            ("max-batch", self.max_batch),
            ("sse-max-topics", self.sse_max_topics),
        ] {
            if v == 0 {
                p.push(format!("[http] {name} must be at least 1"));
            }
        }
        if self.sse_keepalive.0 < Duration::from_secs(1) {
            p.push("[http] sse-keepalive must be at least 1s".to_owned());
        }
        p
    }

    /// The table as `plexus config` shows it, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        for k in &mut c.api_keys {
            if k.secret.is_some() {
                k.secret = Some("********".into());
            }
        }
        if !c.resume_secret.is_empty() {
            c.resume_secret = "********".into();
        }
        let mut t = toml::Table::new();
        if let Ok(v) = toml::Value::try_from(&c) {
            t.insert("http".to_owned(), v);
        }
        format!("\n{}", toml::to_string(&t).unwrap_or_default())
    }
}
