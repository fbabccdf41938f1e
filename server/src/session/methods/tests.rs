//! The handlers through the registry, against a real hub state (no
//! sockets): typed params, the one error mapping, streamed replies.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use plexus_protocol::methods::{PublishParams, PublishResult, SubscribeParams};
use plexus_protocol::{ErrorCode, Frame, RawValue, WireError};

use super::*;
use crate::auth::{AuthSettings, Authenticator, Capabilities, HmacAlg, KeySource, Principal};
use crate::conn::Conn;
use crate::hub::Hub;
use crate::session::context::Ctx;
use crate::session::registry::Handler;
use crate::session::stream::ChunkSink;
use crate::session::table::{FALLBACK, Kind, Meta};

fn hub(tweak: impl FnOnce(&mut Config)) -> Arc<Hub> {
    let mut config = Config {
        debug_methods: true,
        ..Config::default()
    };
    tweak(&mut config);
    let auth = Authenticator::new(AuthSettings::new(KeySource::Hmac {
        secret: vec![7; 32],
        alg: HmacAlg::HS256,
    }))
    .unwrap();
    Arc::new(Hub::new(config, auth, None))
}

fn alice(caps: Capabilities) -> Principal {
    Principal {
        user: "alice".into(),
        caps: Arc::new(caps),
        expires_at: None,
    }
}

fn call_sync(
    r: &Registry,
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    who: &Principal,
    name: &str,
    params: &RawValue,
) -> Result<Bytes, RequestError> {
    let (i, e) = r.table().lookup(name).expect("registered");
    assert_eq!(e.kind, Kind::Sync);
    let Some(Handler::Sync(f)) = r.handler(i) else {
        panic!("{name} is sync")
    };
    f(&mut Ctx::new(hub, conn, who, 1), params)
}

fn raw<T: minicbor::Encode<()>>(v: &T) -> RawValue {
    RawValue::encode(v).unwrap()
}

#[test]
fn the_core_methods_are_typed_and_map_errors_once() {
    let hub = hub(|_| {});
    let r = registry(&hub.config, false);
    let conn = hub.new_conn();
    conn.set_user("alice".into());
    let all = alice(Capabilities::allow_all());
    let sub = |p: &RawValue| call_sync(&r, &hub, &conn, &all, "subscribe", p);
    // Params that do not decode are invalid_params, mapped in one place.
    let e = sub(&raw(&42u8)).unwrap_err();
    assert_eq!(WireError::from(&e).code, ErrorCode::InvalidParams);
    sub(&raw(&SubscribeParams::new("room"))).unwrap();
    assert_eq!(
        sub(&raw(&SubscribeParams::new("room"))).unwrap_err().code(),
        ErrorCode::Conflict
    );
    let data = raw(&"hi");
    let published = call_sync(
        &r,
        &hub,
        &conn,
        &all,
        "publish",
        &raw(&PublishParams::new("room", data.as_raw_ref())),
    )
    .unwrap();
    let res: PublishResult = minicbor::decode(&published).unwrap();
    assert_eq!(res.delivered, 1);
    // `ping` echoes its params without re-encoding them.
    let echo = call_sync(&r, &hub, &conn, &all, "ping", &data).unwrap();
    assert_eq!(&echo[..], data.as_bytes());
    // Capabilities are asked at the moment the handler runs.
    let none = alice(Capabilities::default());
    let e = call_sync(
        &r,
        &hub,
        &conn,
        &none,
        "subscribe",
        &raw(&SubscribeParams::new("x")),
    );
    assert_eq!(e.unwrap_err().code(), ErrorCode::Forbidden);
    hub.broker.drop_conn(&conn);
}

#[cfg(any(debug_assertions, feature = "debug-methods"))]
#[test]
fn debug_methods_are_registered_only_when_enabled() {
    let on = registry(&hub(|_| {}).config, false);
    for (name, kind) in [
        ("debug.sleep", Kind::Async),
        ("debug.panic", Kind::Sync),
        ("debug.stream", Kind::Streamed),
        ("debug.call", Kind::Async),
    ] {
        assert_eq!(
            on.table().lookup(name).map(|(_, e)| e.kind),
            Some(kind),
            "{name}"
        );
    }
    let off = registry(&hub(|c| c.debug_methods = false).config, false);
    assert!(off.table().lookup("debug.sleep").is_none());
}

#[test]
fn a_fallback_takes_unknown_names() {
    let mut r = Registry::new();
    assert!(r.table().lookup("app.thing").is_none());
    r.fallback(Meta::default(), |_, name, _| {
        let name = name.to_owned();
        Ok(Box::pin(
            async move { Err(RequestError::NotFound(name.into())) },
        ))
    });
    assert_eq!(
        r.table().lookup("app.thing").map(|(i, _)| i),
        Some(FALLBACK)
    );
    assert!(r.fallback_handler().is_some());
}

#[cfg(any(debug_assertions, feature = "debug-methods"))]
#[tokio::test]
async fn a_streamed_reply_waits_for_credit_instead_of_overflowing() {
    // A budget of 64 KiB: credit stops the stream at half of it; a reader
    // that drains lets it finish. Without credit, 100 × 4 KiB would have
    // overflowed the queue (4006).
    let hub = hub(|c| c.max_outbound_bytes = 64 * 1024);
    let r = registry(&hub.config, false);
    let conn = hub.new_conn();
    let who = alice(Capabilities::allow_all());
    let (i, e) = r.table().lookup("debug.stream").unwrap();
    assert_eq!(e.kind, Kind::Streamed);
    let Some(Handler::Streamed(f)) = r.handler(i) else {
        panic!()
    };
    let seq = Arc::new(AtomicU64::new(0));
    let sink = ChunkSink::new(conn.clone(), 9, seq.clone(), hub.config.max_frame_size);
    let params = raw(&debug::StreamParams {
        count: 100,
        size: 4096,
    });
    let fut = f(&mut Ctx::new(&hub, &conn, &who, 9), &params, sink).unwrap();
    let task = tokio::spawn(fut);
    let mut chunks = 0u64;
    let mut batch = std::collections::VecDeque::new();
    while chunks < 100 {
        // Wait for the stream to queue something (it is a task of its own
        // here, standing in for the driver's handler futures).
        for _ in 0..10_000 {
            if conn.out.take_batch(&mut batch) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            conn.out.queued_bytes() <= conn.out.credit_limit() + crate::outbound::cost(4200),
            "credit bounds what the stream queues"
        );
        let mut charged = 0;
        for b in batch.drain(..) {
            charged += crate::outbound::cost(b.len());
            let Ok(Frame::Chunk(c)) = Frame::decode(b, &Default::default()) else {
                panic!("a chunk")
            };
            assert_eq!((c.id, c.seq, c.fin), (9, chunks, false));
            assert_eq!(
                c.data.decode::<minicbor::bytes::ByteVec>().unwrap().len(),
                4096
            );
            chunks += 1;
        }
        conn.out.written(charged);
    }
    let final_data = task.await.unwrap().unwrap();
    assert_eq!(&final_data[..], RawValue::null().as_bytes());
    assert_eq!(seq.load(std::sync::atomic::Ordering::Relaxed), 100);
    assert!(!conn.out.is_closing(), "never a slow-consumer close");
}
