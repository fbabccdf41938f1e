//! Durable events as bytes: encoded once, in the commit, and never again.
//!
//! The writer encodes each stored event as an `event` notification frame
//! `[2, "event", {0: topic, 1: data, ? 2: from, 3: offset, 4: position}]`.
//! The params map is a suffix of the frame: it is what the database stores
//! (the body), what catch-up chunks and history pages carry back to back
//! (no re-encoding, no allocation per event), and the frame itself is what
//! live fan-out queues for every subscriber.

use std::sync::Arc;

use bytes::Bytes;
use minicbor::Encoder;
use minicbor::encode::{Error as EncodeError, Write};
use plexus_protocol::Encoded;
use plexus_protocol::NotificationMethod;
use plexus_protocol::frame::KIND_NOTIFICATION;
use plexus_protocol::methods::Event;

use crate::storage::EventPage;

/// A committed event on its way to live subscribers.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The topic.
    pub topic: Arc<str>,
    /// The namespace's id.
    pub namespace: i64,
    /// Its offset in the topic.
    pub offset: u64,
    /// Its position in the namespace.
    pub position: u64,
    /// The whole `event` notification frame, shared by every subscriber.
    pub frame: Bytes,
    /// Where the body (the params map) starts in `frame`.
    pub body_at: usize,
    /// A connection not to deliver it to (the publisher's, with `echo:
    /// false`): opaque to the streams layer.
    pub skip: Option<u64>,
}

impl LiveEvent {
    /// The params map: what the database holds.
    pub fn body(&self) -> &[u8] {
        &self.frame[self.body_at..]
    }
}

/// Length of `[2, "event", ` before the params.
fn header(buf: &mut Vec<u8>) -> usize {
    let mut e = Encoder::new(&mut *buf);
    // Writing to a Vec cannot fail.
    let _ = e
        .array(3)
        .and_then(|e| e.u64(KIND_NOTIFICATION))
        .and_then(|e| e.str(Event::NAME));
    buf.len()
}

/// Encodes the frame of a stored event; returns it with the body's start.
pub fn encode_frame(
    topic: &str,
    data: &[u8],
    from: Option<&str>,
    offset: u64,
    position: u64,
) -> (Bytes, usize) {
    let mut buf = Vec::with_capacity(24 + topic.len() + data.len() + from.map_or(0, str::len));
    let at = header(&mut buf);
    // The map of `EventParams` (keys in the order its derive writes
    // them), with `data` copied as the item it is. Writing to a Vec cannot
    // fail.
    let mut e = Encoder::new(&mut buf);
    let _ = e
        .map(if from.is_some() { 5 } else { 4 })
        .and_then(|e| e.u8(0))
        .and_then(|e| e.str(topic))
        .and_then(|e| e.u8(1))
        .and_then(|e| e.encode(Encoded(data)))
        .and_then(|e| match from {
            Some(f) => e.u8(2).and_then(|e| e.str(f)),
            None => Ok(e),
        })
        .and_then(|e| e.u8(3))
        .and_then(|e| e.u64(offset))
        .and_then(|e| e.u8(4))
        .and_then(|e| e.u64(position));
    (Bytes::from(buf), at)
}

/// Builds a frame around a stored body (an event read back from storage
/// and delivered live, after a resume's buffer overflowed).
pub fn frame_from_body(body: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(8 + body.len());
    header(&mut buf);
    buf.extend_from_slice(body);
    Bytes::from(buf)
}

/// Events as chunk data or a history page's list: a CBOR array of the
/// bodies, written straight from the page's buffer.
#[derive(Debug, Clone, Copy)]
pub struct EventList<'a>(pub &'a EventPage);

impl<C> minicbor::Encode<C> for EventList<'_> {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), EncodeError<W::Error>> {
        e.array(self.0.len() as u64)?;
        Encoded(&self.0.bodies).encode(e, ctx)
    }
}

/// Encoded size of an [`EventList`] of `page`.
pub fn list_len(page: &EventPage) -> usize {
    let n = page.len();
    let head = match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    head + page.bodies.len()
}

/// A fresh random epoch: 16 hex digits.
pub(crate) fn random_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The epoch of a topic that has no row yet: derived from its namespace's
/// epoch and its name (FNV-1a), so that subscribing to a topic nobody wrote
/// gives a stable epoch without a write. The topic's row stores the same
/// value when its first event is written; a reset replaces it with a random
/// one.
pub fn derived_epoch(namespace_epoch: &str, topic: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace_epoch
        .as_bytes()
        .iter()
        .chain(&[0u8])
        .chain(topic.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::methods::EventParams;
    use plexus_protocol::{DecodeLimits, Frame};

    #[test]
    fn the_body_is_the_params_of_the_frame() {
        let data = minicbor::to_vec("hi").unwrap();
        let (frame, at) = encode_frame("o.1", &data, Some("alice"), 7, 42);
        let Frame::Notification(n) =
            Frame::decode(frame.clone(), &DecodeLimits::default()).unwrap()
        else {
            panic!("not a notification")
        };
        assert_eq!(n.method, "event");
        assert_eq!(n.params.as_bytes(), &frame[at..]);
        let p: EventParams = n.params.decode().unwrap();
        assert_eq!((p.topic, p.offset, p.position), ("o.1", Some(7), Some(42)));
        assert_eq!(p.data.as_bytes(), &data[..]);
        assert_eq!(frame_from_body(&frame[at..]), frame);
    }

    #[test]
    fn event_lists_are_arrays_of_bodies() {
        let mut page = EventPage::default();
        for i in 0..30u64 {
            let (f, at) = encode_frame("t", &[0x01], None, i, i);
            page.push(i, i, &f[at..]);
        }
        let bytes = minicbor::to_vec(EventList(&page)).unwrap();
        assert_eq!(bytes.len(), list_len(&page));
        let v: Vec<plexus_protocol::RawValue> = minicbor::decode(&bytes).unwrap();
        assert_eq!(v.len(), 30);
    }

    #[test]
    fn derived_epochs_are_stable_and_distinct() {
        assert_eq!(derived_epoch("e", "a"), derived_epoch("e", "a"));
        assert_ne!(derived_epoch("e", "a"), derived_epoch("e", "b"));
        assert_ne!(derived_epoch("e", "a"), derived_epoch("f", "a"));
        assert_eq!(derived_epoch("e", "a").len(), 16);
        assert_eq!(random_epoch().len(), 16);
    }
}
