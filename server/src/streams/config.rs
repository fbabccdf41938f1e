//! Stream namespaces and the writer's settings, from the config file.
//!
//! ```toml
//! [storage]
//! commit-max-batch = 1024        # requests per transaction
//! commit-max-delay = "0ms"       # extra wait for a batch to fill
//! idempotency-retention = "24h"  # how long idempotency keys are kept
//!
//! [[streams]]
//! pattern = "orders.>"
//! max-events = 1_000_000         # per topic
//! max-age = "30d"
//! max-bytes = "1GiB"             # per topic
//! durability = "fsynced"         # or "committed"
//! ```
//!
//! Namespaces must not overlap: no topic may match two of them (checked by
//! [`StreamsConfig::validate`]). A namespace's identity in the database is
//! its pattern text; changing a pattern starts a new namespace (with a new
//! epoch), and topics already stored stay in the one they were created in.

use std::time::Duration;

use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use serde::{Deserialize, Deserializer};

use crate::storage::Flush;

/// Default most requests in one commit.
pub const DEFAULT_COMMIT_MAX_BATCH: usize = 1024;
/// Default most requests waiting for the writer.
pub const DEFAULT_COMMIT_QUEUE: usize = 65_536;
/// Default most payload bytes of the requests waiting for the writer.
pub const DEFAULT_COMMIT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Default idempotency-key retention: longer than any SDK retry horizon
/// (the SDK gives up retrying a publish after minutes, not hours).
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default interval of the age and idempotency-key retention passes.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// Default most events (or keys) one retention transaction deletes.
pub const DEFAULT_RETENTION_SLICE: u32 = 2000;
/// Default topics whose state the writer keeps in memory.
pub const DEFAULT_TOPIC_CACHE: usize = 100_000;
/// Default producers whose state the writer keeps in memory.
pub const DEFAULT_PRODUCER_CACHE: usize = 100_000;
/// Default most events a resume buffers from the live stream while it
/// finishes reading storage; past it the buffer is dropped and storage read
/// again.
pub const DEFAULT_SEAM_BUFFER_EVENTS: usize = 8192;
/// Default most bytes of that buffer.
pub const DEFAULT_SEAM_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Default most rows one catch-up query reads.
pub const DEFAULT_CATCHUP_PAGE: u32 = 4096;

/// Why the streams configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML does not parse or has a wrong value.
    #[error("invalid streams configuration: {0}")]
    Parse(String),
    /// A namespace pattern is not a valid pattern.
    #[error("invalid stream pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        reason: String,
    },
    /// Two namespaces overlap.
    #[error("stream patterns {0:?} and {1:?} overlap (a topic may match only one namespace)")]
    Overlap(String, String),
    /// A setting is out of range.
    #[error("invalid setting {0}: {1}")]
    Range(&'static str, &'static str),
}

/// The durability a namespace asks of its publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// Flushed to disk before the answer (the default).
    #[default]
    Fsynced,
    /// Committed before the answer; flushed later.
    Committed,
}

impl DurabilitySetting {
    /// The storage flush level.
    pub fn flush(self) -> Flush {
        match self {
            DurabilitySetting::Fsynced => Flush::Fsynced,
            DurabilitySetting::Committed => Flush::Committed,
        }
    }
}

/// One `[[streams]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NamespaceConfig {
    /// The topics it holds.
    pub pattern: String,
    /// Most events kept per topic.
    #[serde(default)]
    pub max_events: Option<u64>,
    /// Longest an event is kept.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_age: Option<Duration>,
    /// Most bytes kept per topic.
    #[serde(default, deserialize_with = "opt_bytes")]
    pub max_bytes: Option<u64>,
    /// What a publish waits for.
    #[serde(default)]
    pub durability: DurabilitySetting,
}

impl NamespaceConfig {
    /// A namespace for `pattern`, without retention limits, fsynced.
    pub fn new(pattern: impl Into<String>) -> Self {
        NamespaceConfig {
            pattern: pattern.into(),
            max_events: None,
            max_age: None,
            max_bytes: None,
            durability: DurabilitySetting::Fsynced,
        }
    }
}

/// The `[storage]` table: the writer's and the readers' bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WriterConfig {
    /// Most requests in one transaction.
    pub commit_max_batch: usize,
    /// How long the writer waits for more requests once it has some and
    /// the batch is not full (0: take what is queued; under load batches
    /// fill while the previous one commits).
    #[serde(deserialize_with = "duration")]
    pub commit_max_delay: Duration,
    /// Most requests waiting for the writer; past it a publish answers
    /// `unavailable` at once.
    pub commit_queue: usize,
    /// Most payload bytes waiting for the writer; past it, likewise.
    pub commit_queue_bytes: usize,
    /// How long an idempotency key is kept.
    #[serde(deserialize_with = "duration")]
    pub idempotency_retention: Duration,
    /// Interval of the age and key retention passes.
    #[serde(deserialize_with = "duration")]
    pub retention_interval: Duration,
    /// Most events or keys one retention transaction deletes.
    pub retention_slice: u32,
    /// Topics whose state the writer keeps in memory.
    pub topic_cache: usize,
    /// Producers whose state the writer keeps in memory.
    pub producer_cache: usize,
    /// Most events a resume buffers from the live stream.
    pub seam_buffer_events: usize,
    /// Most bytes a resume buffers from the live stream.
    pub seam_buffer_bytes: usize,
    /// Most rows one catch-up or history query reads.
    pub catchup_page: u32,
    /// Other processes write the same database (cluster mode, set by the
    /// hub, never by the config file): every transaction locks and
    /// reloads the rows it changes instead of trusting the writer's cache,
    /// and the fan-out sequences each topic's events (gaps filled from
    /// storage, repeats dropped).
    #[serde(skip)]
    pub shared: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            commit_max_batch: DEFAULT_COMMIT_MAX_BATCH,
            commit_max_delay: Duration::ZERO,
            commit_queue: DEFAULT_COMMIT_QUEUE,
            commit_queue_bytes: DEFAULT_COMMIT_QUEUE_BYTES,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            retention_slice: DEFAULT_RETENTION_SLICE,
            topic_cache: DEFAULT_TOPIC_CACHE,
            producer_cache: DEFAULT_PRODUCER_CACHE,
            seam_buffer_events: DEFAULT_SEAM_BUFFER_EVENTS,
            seam_buffer_bytes: DEFAULT_SEAM_BUFFER_BYTES,
            catchup_page: DEFAULT_CATCHUP_PAGE,
            shared: false,
        }
    }
}

/// The streams part of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct StreamsConfig {
    /// The durable namespaces (`[[streams]]`).
    pub streams: Vec<NamespaceConfig>,
    /// The writer's settings (`[storage]`).
    pub storage: WriterConfig,
}

impl StreamsConfig {
    /// Reads the `[[streams]]` and `[storage]` tables of a config file,
    /// ignoring every other key (the hub's own settings), and validates
    /// them.
    pub fn from_toml(text: &str) -> Result<StreamsConfig, ConfigError> {
        let c: StreamsConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks patterns, overlaps and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut parsed = Vec::with_capacity(self.streams.len());
        for n in &self.streams {
            let p =
                Pattern::parse(&n.pattern, MAX_TOPIC_LEN).map_err(|e| ConfigError::Pattern {
                    pattern: n.pattern.clone(),
                    reason: e.to_string(),
                })?;
            if n.max_events == Some(0) {
                return Err(ConfigError::Range("max-events", "must be at least 1"));
            }
            if n.max_bytes == Some(0) {
                return Err(ConfigError::Range("max-bytes", "must be at least 1"));
            }
            parsed.push(p);
        }
        for (i, a) in parsed.iter().enumerate() {
            for b in &parsed[i + 1..] {
                if overlap(a, b) {
                    return Err(ConfigError::Overlap(a.as_str().into(), b.as_str().into()));
                }
            }
        }
        let s = &self.storage;
        if s.commit_max_batch == 0 {
            return Err(ConfigError::Range("commit-max-batch", "must be at least 1"));
        }
        if s.commit_queue_bytes == 0 {
            return Err(ConfigError::Range(
                "commit-queue-bytes",
                "must be at least 1",
            ));
        }
        if s.commit_queue == 0 {
            return Err(ConfigError::Range("commit-queue", "must be at least 1"));
        }
        if s.retention_slice == 0 {
            return Err(ConfigError::Range("retention-slice", "must be at least 1"));
        }
        if s.catchup_page == 0 {
            return Err(ConfigError::Range("catchup-page", "must be at least 1"));
        }
        if s.seam_buffer_events == 0 || s.seam_buffer_bytes == 0 {
            return Err(ConfigError::Range("seam-buffer-*", "must be at least 1"));
        }
        if s.topic_cache == 0 || s.producer_cache == 0 {
            return Err(ConfigError::Range("*-cache", "must be at least 1"));
        }
        Ok(())
    }
}

impl StreamsConfig {
    /// The effective settings as the config file writes them (`plexus
    /// config`): the whole `[storage]` table and every `[[streams]]`.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let d = |v: Duration| format!("{:?}", humantime::format_duration(v).to_string());
        let s = &self.storage;
        let mut out = String::from("\n[storage]\n");
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "commit-max-batch = {}\ncommit-max-delay = {}\ncommit-queue = {}\n\
             commit-queue-bytes = {}\nidempotency-retention = {}\nretention-interval = {}\n\
             retention-slice = {}\ntopic-cache = {}\nproducer-cache = {}\n\
             seam-buffer-events = {}\nseam-buffer-bytes = {}\ncatchup-page = {}\n",
            s.commit_max_batch,
            d(s.commit_max_delay),
            s.commit_queue,
            s.commit_queue_bytes,
            d(s.idempotency_retention),
            d(s.retention_interval),
            s.retention_slice,
            s.topic_cache,
            s.producer_cache,
            s.seam_buffer_events,
            s.seam_buffer_bytes,
            s.catchup_page,
        );
        if self.streams.is_empty() {
            out.push_str("# no [[streams]]: no topic is durable\n");
        }
        for n in &self.streams {
            let _ = write!(out, "\n[[streams]]\npattern = {:?}\n", n.pattern);
            if let Some(v) = n.max_events {
                let _ = writeln!(out, "max-events = {v}");
            }
            if let Some(v) = n.max_age {
                let _ = writeln!(out, "max-age = {}", d(v));
            }
            if let Some(v) = n.max_bytes {
                let _ = writeln!(out, "max-bytes = {v}");
            }
            let durability = match n.durability {
                DurabilitySetting::Fsynced => "fsynced",
                DurabilitySetting::Committed => "committed",
            };
            let _ = writeln!(out, "durability = \"{durability}\"");
        }
        out
    }
}

/// Whether some topic matches both patterns.
pub fn overlap(a: &Pattern, b: &Pattern) -> bool {
    let mut at = a.tokens();
    let mut bt = b.tokens();
    loop {
        match (at.next(), bt.next()) {
            (None, None) => return true,
            // `>` matches one or more tokens: the other side has one here.
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) => {
                if x != "*" && y != "*" && x != y {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BytesValue {
    Int(u64),
    Text(String),
}

fn opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match BytesValue::deserialize(d)? {
        BytesValue::Int(n) => Ok(Some(n)),
        BytesValue::Text(s) => parse_bytes(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Parses a size: a number with an optional unit (`B`, `KB`, `MB`, `GB`,
/// `TB` in powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    #[test]
    fn overlap_follows_the_wildcards() {
        assert!(overlap(&p("orders.>"), &p("orders.eu")));
        assert!(overlap(&p("orders.*"), &p("*.eu")));
        assert!(overlap(&p(">"), &p("a")));
        assert!(!overlap(&p("orders.>"), &p("orders")));
        assert!(!overlap(&p("orders.*"), &p("orders.a.b")));
        assert!(!overlap(&p("a.b"), &p("a.c")));
        assert!(overlap(&p("a.*.c"), &p("a.b.*")));
    }

    #[test]
    fn config_parses_and_rejects_overlaps() {
        let c = StreamsConfig::from_toml(
            "listen = \"127.0.0.1:1\"\n[storage]\ncommit-max-batch = 8\n\
             [[streams]]\npattern = \"orders.>\"\nmax-events = 1_000\nmax-age = \"30d\"\n\
             max-bytes = \"1GiB\"\ndurability = \"committed\"\n\
             [[streams]]\npattern = \"state.*\"\n",
        )
        .unwrap();
        assert_eq!(c.storage.commit_max_batch, 8);
        assert_eq!(c.streams[0].max_bytes, Some(1 << 30));
        assert_eq!(c.streams[0].max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(c.streams[0].durability, DurabilitySetting::Committed);
        assert_eq!(c.streams[1].durability, DurabilitySetting::Fsynced);
        let e = StreamsConfig::from_toml(
            "[[streams]]\npattern = \"a.>\"\n[[streams]]\npattern = \"a.b\"\n",
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Overlap(..)), "{e}");
        assert!(StreamsConfig::from_toml("[[streams]]\npattern = \"a..b\"\n").is_err());
        assert!(
            StreamsConfig::from_toml("[[streams]]\npattern = \"a\"\nmax-events = 0\n").is_err()
        );
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert!(parse_bytes("1PB").is_err());
        // The rendering reads back as the same settings.
        let shown = c.to_toml();
        let back = StreamsConfig::from_toml(&shown).unwrap();
        assert_eq!(back.storage.commit_max_batch, 8);
        assert_eq!(back.streams.len(), 2);
        assert_eq!(back.streams[0].max_bytes, Some(1 << 30));
        assert_eq!(back.streams[0].max_age, c.streams[0].max_age);
        assert_eq!(back.streams[0].durability, DurabilitySetting::Committed);
    }
}
