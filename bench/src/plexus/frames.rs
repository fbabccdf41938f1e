//! The frames the load generator writes and the few fields it reads back,
//! with as little work per frame as the NATS driver does per command.

use bytes::Bytes;
use minicbor::bytes::ByteSlice;
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{PublishParams, PublishResult, ServerLimits};
use plexus_protocol::{DecodeLimits, Frame, RawValue};

use crate::clock::stamp;

/// Encodes a publish request with a freshly stamped payload.
pub fn publish_frame(id: u64, topic: &str, payload: &mut [u8]) -> Bytes {
    stamp(payload);
    let bytes: &ByteSlice = payload[..].into();
    let data = minicbor::to_vec(bytes).unwrap_or_default();
    let data =
        RawValue::from_bytes(Bytes::from(data), &DecodeLimits::default()).unwrap_or_default();
    let params = PublishParams::new(topic, data.as_raw_ref());
    Bytes::from(encode_request(id, "publish", &params).unwrap_or_default())
}

/// The requests a client may keep in flight (a publish window, or calls):
/// `wanted`, but no more
/// than the hub's announced `max_in_flight`, nor more frames of
/// `frame_len` bytes than its `max_in_flight_bytes` (keys a hub does not
/// announce are 0 and bound nothing). At least 1.
pub fn publish_window(wanted: usize, limits: &ServerLimits, frame_len: usize) -> usize {
    let mut w = wanted;
    if limits.max_in_flight > 0 {
        w = w.min(usize::try_from(limits.max_in_flight).unwrap_or(usize::MAX));
    }
    if limits.max_in_flight_bytes > 0 {
        let bytes = usize::try_from(limits.max_in_flight_bytes).unwrap_or(usize::MAX);
        w = w.min(bytes / frame_len.max(1));
    }
    w.max(1)
}

/// `delivered` of a publish response, if `frame` is one that succeeded.
pub fn delivered(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Response(r) => r
            .outcome
            .as_ref()
            .ok()?
            .decode::<PublishResult>()
            .ok()
            .map(|p| p.delivered),
        _ => None,
    }
}

/// The stamped payload carried back in a `ping` response (Plexus) or in the
/// echoed request (floor).
pub fn rpc_payload(f: &Frame) -> Option<&[u8]> {
    let raw = match f {
        Frame::Response(r) => r.outcome.as_ref().ok()?,
        Frame::Request(r) => &r.params,
        _ => return None,
    };
    let bytes: &ByteSlice = raw.decode().ok()?;
    Some(bytes)
}

/// The bytes of an `event` frame's payload (a CBOR byte string), if any.
///
/// The load generator reads only what it needs, with a plain CBOR decoder
/// (as the NATS driver reads only the `MSG` header): `[2, "event", {0:
/// topic, 1: data, …}]`, with no validation beyond bounds: the hub already
/// validated what it forwards. This keeps the generator's cost per event
/// small and comparable across targets; the hub's own decoding is what is
/// measured.
pub fn event_payload(frame: &[u8]) -> Option<&[u8]> {
    const HEAD: &[u8] = &[0x83, 0x02, 0x65, b'e', b'v', b'e', b'n', b't'];
    let rest = frame.strip_prefix(HEAD)?;
    let (&map, mut rest) = rest.split_first()?;
    if map & 0xe0 != 0xa0 {
        return None;
    }
    for _ in 0..(map & 0x1f) {
        let (&key, r) = rest.split_first()?;
        let (len, body) = head_len(r)?;
        let (item, r) = body.split_at_checked(len)?;
        if key == 0x01 {
            return Some(item);
        }
        rest = r;
    }
    None
}

/// The length of a byte or text string whose head starts `input`, and the
/// bytes after the head.
fn head_len(input: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = input.split_first()?;
    if !matches!(first >> 5, 2 | 3) {
        return None;
    }
    let n = match first & 0x1f {
        n @ 0..=23 => return Some((usize::from(n), rest)),
        24 => 1,
        25 => 2,
        26 => 4,
        _ => return None,
    };
    let (len, rest) = rest.split_at_checked(n)?;
    let len = len
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::Response;
    use plexus_protocol::frame::encode_notification;

    #[test]
    fn event_payload_reads_the_data_of_a_real_event() {
        let bytes: &ByteSlice = (&[1u8, 2, 3][..]).into();
        let data = RawValue::encode(&bytes).unwrap();
        let frame = encode_notification(
            "event",
            &plexus_protocol::methods::EventParams::new("a.b", data.as_raw_ref(), Some("u")),
        )
        .unwrap();
        assert_eq!(event_payload(&frame), Some(&[1u8, 2, 3][..]));
        let ping = encode_request(1, "ping", &()).unwrap();
        assert_eq!(event_payload(&ping), None);
    }

    #[test]
    fn the_window_respects_what_the_hub_announces() {
        let mut limits = ServerLimits::default();
        assert_eq!(publish_window(4096, &limits, 200), 4096);
        limits.max_in_flight = 1024;
        assert_eq!(publish_window(4096, &limits, 200), 1024);
        assert_eq!(publish_window(64, &limits, 200), 64);
        limits.max_in_flight_bytes = 100_000;
        assert_eq!(publish_window(4096, &limits, 200), 500);
        limits.max_in_flight_bytes = 10;
        assert_eq!(publish_window(4096, &limits, 200), 1);
    }

    #[test]
    fn delivered_is_read_from_a_publish_response() {
        let ok = Frame::Response(Response {
            id: 3,
            outcome: Ok(RawValue::encode(&PublishResult::new(7)).unwrap()),
        });
        assert_eq!(delivered(&ok), Some(7));
        let stamp = [9u8; 8];
        let bytes: &ByteSlice = (&stamp[..]).into();
        let pong = Frame::Response(Response {
            id: 4,
            outcome: Ok(RawValue::encode(&bytes).unwrap()),
        });
        assert_eq!(rpc_payload(&pong), Some(&stamp[..]));
        assert_eq!(delivered(&pong), None);
        let frame = publish_frame(5, "a.b", &mut [0u8; 16]);
        assert!(matches!(
            Frame::decode(frame, &DecodeLimits::default()),
            Ok(Frame::Request(r)) if r.method == "publish" && r.id == 5
        ));
    }
}
