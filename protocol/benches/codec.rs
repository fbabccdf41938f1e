//! Encode and decode cost of typical frames.
//!
//! Run with `cargo bench -p plexus-protocol --bench codec`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use plexus_protocol::frame::{encode_notification, encode_request};
use plexus_protocol::methods::{EventParams, PublishParams};
use plexus_protocol::{DecodeLimits, Frame, RawValue, decode_params};
use std::hint::black_box;

fn payload(len: usize) -> RawValue {
    // A byte string whose encoding is `len` bytes long.
    let body = vec![0xabu8; len.saturating_sub(3)];
    RawValue::encode(&minicbor::bytes::ByteVec::from(body)).unwrap()
}

fn bench(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("frame");

    // A small request: [0, 42, "ping", null].
    let ping = Bytes::from(encode_request(42, "ping", &RawValue::null()).unwrap());
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode/small_request", |b| {
        b.iter(|| encode_request(black_box(42), "ping", black_box(&RawValue::null())).unwrap())
    });
    g.bench_function("decode/small_request", |b| {
        b.iter(|| Frame::decode(black_box(ping.clone()), &limits).unwrap())
    });

    // A publish of a 128-byte payload and the event it becomes.
    let data = payload(128);
    let publish = Bytes::from(
        encode_request(
            7,
            "publish",
            &PublishParams::new("chat.room1", data.as_raw_ref()),
        )
        .unwrap(),
    );
    g.bench_function("encode/event_128B", |b| {
        b.iter(|| {
            encode_notification(
                "event",
                &EventParams::new(black_box("chat.room1"), data.as_raw_ref(), Some("alice")),
            )
            .unwrap()
        })
    });
    let event = Bytes::from(
        encode_notification(
            "event",
            &EventParams::new("chat.room1", data.as_raw_ref(), Some("alice")),
        )
        .unwrap(),
    );
    g.bench_function("decode/event_128B", |b| {
        b.iter(|| {
            let Frame::Notification(n) = Frame::decode(black_box(event.clone()), &limits).unwrap()
            else {
                unreachable!()
            };
            let p: EventParams = decode_params(&n.params).unwrap();
            black_box(p.data.as_bytes().len());
        })
    });
    g.bench_function("decode/publish_128B_with_params", |b| {
        b.iter(|| {
            let Frame::Request(r) = Frame::decode(black_box(publish.clone()), &limits).unwrap()
            else {
                unreachable!()
            };
            let p: PublishParams = decode_params(&r.params).unwrap();
            black_box(r.params.slice_ref(p.data));
        })
    });

    // A 64 KiB chunk.
    let big = payload(64 * 1024);
    let chunk = Frame::Chunk(plexus_protocol::Chunk {
        id: 9,
        seq: 3,
        fin: false,
        data: big.clone(),
    });
    let chunk_bytes = chunk.to_bytes();
    g.throughput(Throughput::Bytes(chunk_bytes.len() as u64));
    g.bench_function("encode/chunk_64KiB", |b| {
        b.iter(|| black_box(&chunk).to_vec())
    });
    g.bench_function("decode/chunk_64KiB", |b| {
        b.iter(|| Frame::decode(black_box(chunk_bytes.clone()), &limits).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
