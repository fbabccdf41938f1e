//! The method table the session core consults: names, kinds and metadata,
//! without the handlers themselves (those live in the
//! [`Registry`](super::registry::Registry), which the driver holds).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A method's position in the table, found once per request.
pub type MethodIndex = u16;

/// The index [`MethodTable::lookup`] gives names the table does not hold
/// when a fallback is registered.
pub const FALLBACK: MethodIndex = MethodIndex::MAX;

/// How a method's handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Runs to completion on the connection's task, before the next frame
    /// is read. It never waits.
    Sync,
    /// Returns a future that runs concurrently with the connection's other
    /// requests, until its terminal response.
    Async,
    /// Like [`Kind::Async`], but sends chunk frames with credit before its
    /// final chunk.
    Streamed,
}

/// What the core needs to know about a method before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Meta {
    /// Whether the request counts against `max_in_flight` and
    /// `max_in_flight_bytes` (every v1 method does, decision P2).
    pub counts_in_flight: bool,
    /// Rate-limit tokens one call takes.
    pub cost: u32,
    /// Whether `request-timeout` bounds the handler's run (every method
    /// but a resuming `subscribe`, whose catch-up is paced by the client's
    /// reading and bounded by the keepalive instead).
    pub timeout: bool,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            counts_in_flight: true,
            cost: 1,
            timeout: true,
        }
    }
}

impl Meta {
    /// Sets the rate-limit cost.
    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost.max(1);
        self
    }

    /// Exempts the handler from `request-timeout`.
    pub fn without_timeout(mut self) -> Self {
        self.timeout = false;
        self
    }
}

/// One method in the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The wire name.
    pub name: Box<str>,
    /// How its handler runs.
    pub kind: Kind,
    /// Its metadata.
    pub meta: Meta,
}

/// FNV-1a: method names come from a fixed table, so a fast hash is enough
/// (a client can only look names up, never insert them).
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Method names to index, kind and metadata.
#[derive(Debug, Clone, Default)]
pub struct MethodTable {
    entries: Vec<Entry>,
    index: HashMap<Box<str>, MethodIndex, BuildHasherDefault<Fnv>>,
    fallback: Option<Entry>,
}

impl MethodTable {
    /// Adds a method; a second entry for the same name replaces the first.
    /// Returns its index.
    ///
    /// # Panics
    ///
    /// With more than 65,534 methods (a programming error: the table is
    /// built once at start).
    pub fn add(&mut self, name: &str, kind: Kind, meta: Meta) -> MethodIndex {
        let entry = Entry {
            name: name.into(),
            kind,
            meta,
        };
        if let Some(&i) = self.index.get(name) {
            self.entries[usize::from(i)] = entry;
            return i;
        }
        let i = MethodIndex::try_from(self.entries.len())
            .ok()
            .filter(|i| *i != FALLBACK);
        #[allow(clippy::expect_used)] // the table is built once, from code
        let i = i.expect("fewer than 65,535 methods");
        self.entries.push(entry);
        self.index.insert(name.into(), i);
        i
    }

    /// Sends names the table does not hold to a fallback handler of this
    /// kind and metadata (routed RPC uses it).
    pub fn set_fallback(&mut self, kind: Kind, meta: Meta) {
        self.fallback = Some(Entry {
            name: "".into(),
            kind,
            meta,
        });
    }

    /// The method called `name`, or the fallback.
    pub fn lookup(&self, name: &str) -> Option<(MethodIndex, &Entry)> {
        match self.index.get(name) {
            Some(&i) => self.entries.get(usize::from(i)).map(|e| (i, e)),
            None => self.fallback.as_ref().map(|e| (FALLBACK, e)),
        }
    }

    /// The entry at `index` (the fallback at [`FALLBACK`]).
    pub fn get(&self, index: MethodIndex) -> Option<&Entry> {
        if index == FALLBACK {
            self.fallback.as_ref()
        } else {
            self.entries.get(usize::from(index))
        }
    }

    /// Every method, in index order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_name_and_fallback() {
        let mut t = MethodTable::default();
        let ping = t.add("ping", Kind::Sync, Meta::default());
        let sleep = t.add("debug.sleep", Kind::Async, Meta::default().with_cost(3));
        assert_eq!(
            t.lookup("ping").map(|(i, e)| (i, e.kind)),
            Some((ping, Kind::Sync))
        );
        assert_eq!(t.lookup("debug.sleep").unwrap().1.meta.cost, 3);
        assert!(t.lookup("nope").is_none());
        assert_eq!(
            t.add("ping", Kind::Async, Meta::default()),
            ping,
            "replaced in place"
        );
        assert_eq!(t.get(ping).unwrap().kind, Kind::Async);
        t.set_fallback(Kind::Async, Meta::default());
        assert_eq!(t.lookup("nope").map(|(i, _)| i), Some(FALLBACK));
        assert_eq!(t.entries().len(), 2);
        assert_ne!(sleep, FALLBACK);
    }
}
