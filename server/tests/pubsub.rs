//! Publish/subscribe and presence over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use jsonwebtoken::Algorithm;
use plexus_protocol::methods::{
    Empty, EventParams, PresenceGetParams, PresenceGetResult, PresenceNotice, PresenceSetParams,
    PublishParams, PublishResult, SubscribeParams, UnsubscribeParams,
};
use plexus_protocol::{ErrorCode, Frame, RawValue, WireError};
use plexus_testkit::*;

async fn subscribe(c: &mut Client, topic: &str, presence: bool) -> Result<RawValue, WireError> {
    c.call(
        "subscribe",
        &SubscribeParams::new(topic).with_presence(presence),
    )
    .await
}

async fn publish(
    c: &mut Client,
    topic: &str,
    data: &RawValue,
    echo: Option<bool>,
) -> Result<u64, WireError> {
    c.call("publish", &{
        let mut p = PublishParams::new(topic, data.as_raw_ref());
        p.echo = echo;
        p
    })
    .await
    .map(|r| r.decode::<PublishResult>().unwrap().delivered)
}

/// The topic and data of the next `event`.
async fn next_event(c: &mut Client) -> (String, RawValue, Option<String>) {
    let n = c.notification("event").await;
    let p: EventParams = n.params.decode().unwrap();
    (
        p.topic.to_owned(),
        RawValue::encode(&p.data).unwrap(),
        p.from.map(str::to_owned),
    )
}

/// Sets presence info, which must succeed.
async fn set_info(c: &mut Client, info: &str) {
    c.call(
        "presence.set",
        &PresenceSetParams {
            info: raw(&info).as_raw_ref(),
        },
    )
    .await
    .unwrap();
}

/// The next `presence.join` or `presence.leave`.
async fn notice(c: &mut Client, method: &str) -> PresenceNotice {
    c.notification(method).await.params.decode().unwrap()
}

#[tokio::test]
async fn publish_reaches_subscribers_with_wildcards_once_per_connection() {
    let server = TestHub::start(|_| {}).await;
    let addr = server.addr();
    let (mut exact, _) = Client::authed(addr, &token("a")).await;
    let (mut star, _) = Client::authed(addr, &token("b")).await;
    let (mut rest, _) = Client::authed(addr, &token("c")).await;
    let (mut publisher, _) = Client::authed(addr, &token("p")).await;
    subscribe(&mut exact, "chat.room1", false).await.unwrap();
    subscribe(&mut star, "chat.*", false).await.unwrap();
    subscribe(&mut rest, "chat.>", false).await.unwrap();
    // Overlapping patterns on one connection still deliver once.
    subscribe(&mut rest, "chat.room1", false).await.unwrap();

    let data = raw(&("hello", 1u8));
    assert_eq!(
        publish(&mut publisher, "chat.room1", &data, None)
            .await
            .unwrap(),
        3
    );
    for c in [&mut exact, &mut star, &mut rest] {
        let (topic, got, from) = next_event(c).await;
        assert_eq!((topic.as_str(), from.as_deref()), ("chat.room1", Some("p")));
        assert_eq!(got, data, "payload routed byte for byte");
    }
    assert_eq!(
        publish(&mut publisher, "chat.room2.thread", &data, None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(next_event(&mut rest).await.0, "chat.room2.thread");
    // Nothing else arrived at `rest` (the duplicate match was folded).
    rest.call("ping", &Empty {}).await.unwrap();
    assert!(
        rest.pending()
            .iter()
            .all(|f| !matches!(f, Frame::Notification(_)))
    );

    // Unsubscribe stops delivery; unknown subscriptions are not_found.
    star.call("unsubscribe", &UnsubscribeParams { topic: "chat.*" })
        .await
        .unwrap();
    let err = star
        .call("unsubscribe", &UnsubscribeParams { topic: "chat.*" })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(
        publish(&mut publisher, "chat.room3", &data, None)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn events_from_one_publisher_arrive_in_order_and_echo_is_optional() {
    let server = TestHub::start(|c| c.rate_burst = 1000).await;
    let (mut c, _) = Client::authed(server.addr(), &token("solo")).await;
    let (mut other, _) = Client::authed(server.addr(), &token("other")).await;
    subscribe(&mut c, "seq", false).await.unwrap();
    subscribe(&mut other, "seq", false).await.unwrap();
    for i in 0..200u32 {
        c.request(
            "publish",
            &PublishParams::new("seq", raw(&i).as_raw_ref()).with_echo(false),
        )
        .await;
    }
    for i in 0..200u32 {
        let (_, data, _) = next_event(&mut other).await;
        assert_eq!(data.decode::<u32>().unwrap(), i);
    }
    // With echo off the publisher got none of its own events.
    c.call("ping", &Empty {}).await.unwrap();
    assert!(
        c.pending()
            .iter()
            .all(|f| !matches!(f, Frame::Notification(_)))
    );
    // With echo on (the default) it gets its own.
    assert_eq!(publish(&mut c, "seq", &raw(&7u8), None).await.unwrap(), 2);
    next_event(&mut c).await;
}

#[tokio::test]
async fn capabilities_are_enforced_on_subscribe_and_publish() {
    let server = TestHub::start(|_| {}).await;
    let t = sign(
        &claims("alice", &["chat.>"], &["chat.room1"], false),
        Algorithm::HS256,
        SECRET,
    );
    let (mut c, _) = Client::authed(server.addr(), &t).await;
    subscribe(&mut c, "chat.room9", false).await.unwrap();
    subscribe(&mut c, "chat.*", false).await.unwrap();
    assert_eq!(
        subscribe(&mut c, "news.today", false)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        subscribe(&mut c, ">", false).await.unwrap_err().code,
        ErrorCode::Forbidden
    );
    let data = raw(&1u8);
    publish(&mut c, "chat.room1", &data, None).await.unwrap();
    assert_eq!(
        publish(&mut c, "chat.room2", &data, None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    // presence.set needs the presence capability.
    let err = c
        .call(
            "presence.set",
            &PresenceSetParams {
                info: raw(&"hi").as_raw_ref(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    // presence.get needs subscribe rights on the topic.
    let err = c
        .call(
            "presence.get",
            &PresenceGetParams {
                topic: "news.x",
                cursor: None,
                limit: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
}

#[tokio::test]
async fn subscribe_and_publish_validate_their_params() {
    let server = TestHub::start(|c| {
        c.max_subscriptions = 2;
        c.max_payload = 64;
        c.max_topic_len = 16;
    })
    .await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let code = |r: Result<RawValue, WireError>| r.unwrap_err().code;
    assert_eq!(
        code(c.call("subscribe", &raw(&42u8)).await),
        ErrorCode::InvalidParams
    );
    assert_eq!(
        code(subscribe(&mut c, "a..b", false).await),
        ErrorCode::InvalidParams
    );
    assert_eq!(
        code(subscribe(&mut c, "a.*", true).await),
        ErrorCode::InvalidParams
    );
    assert_eq!(
        code(subscribe(&mut c, "a.very.long.topic.name", false).await),
        ErrorCode::PayloadTooLarge
    );
    subscribe(&mut c, "a", false).await.unwrap();
    assert_eq!(
        code(subscribe(&mut c, "a", false).await),
        ErrorCode::Conflict
    );
    subscribe(&mut c, "b", false).await.unwrap();
    assert_eq!(
        code(subscribe(&mut c, "c", false).await),
        ErrorCode::TooManyRequests
    );
    let big = raw(&minicbor::bytes::ByteVec::from(vec![0u8; 100]));
    assert_eq!(
        publish(&mut c, "a", &big, None).await.unwrap_err().code,
        ErrorCode::PayloadTooLarge
    );
    assert_eq!(
        publish(&mut c, "a.*", &raw(&1u8), None)
            .await
            .unwrap_err()
            .code,
        ErrorCode::InvalidParams
    );
}

#[tokio::test]
async fn presence_join_leave_get_and_cleanup_on_abrupt_disconnect() {
    let server = TestHub::start(|c| c.max_presence_page = 2).await;
    let addr = server.addr();
    let (mut a, ra) = Client::authed(addr, &token("alice")).await;
    subscribe(&mut a, "room", true).await.unwrap();
    set_info(&mut a, "typing").await;

    let (mut b, rb) = Client::authed(addr, &token("bob")).await;
    subscribe(&mut b, "room", true).await.unwrap();
    let join: PresenceNotice = notice(&mut a, "presence.join").await;
    assert_eq!(
        (join.topic.as_str(), join.member.user.as_str()),
        ("room", "bob")
    );
    assert_eq!(join.member.session, rb.session);

    // Info changes are announced as joins.
    set_info(&mut b, "away").await;
    let upd: PresenceNotice = notice(&mut a, "presence.join").await;
    assert_eq!(upd.member.info.unwrap().decode::<String>().unwrap(), "away");

    // Paging.
    let c = {
        let (mut c, _) = Client::authed(addr, &token("carol")).await;
        subscribe(&mut c, "room", true).await.unwrap();
        c
    };
    let page1: PresenceGetResult = b
        .call(
            "presence.get",
            &PresenceGetParams {
                topic: "room",
                cursor: None,
                limit: Some(100),
            },
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        page1.members.len(),
        2,
        "page size capped by max_presence_page"
    );
    assert_eq!(page1.members[0].session, ra.session);
    assert_eq!(
        page1.members[0]
            .info
            .as_ref()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "typing"
    );
    let page2: PresenceGetResult = b
        .call(
            "presence.get",
            &PresenceGetParams {
                topic: "room",
                cursor: page1.next,
                limit: Some(2),
            },
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(page2.members.len(), 1);
    assert_eq!(page2.members[0].user, "carol");
    assert_eq!(page2.next, None);

    // An abrupt disconnect (TCP dropped, no close handshake) still leaves.
    drop(c.ws.into_inner());
    let leave: PresenceNotice = notice(&mut a, "presence.leave").await;
    assert_eq!(leave.member.user, "carol");
    // Unsubscribe leaves too.
    b.call("unsubscribe", &UnsubscribeParams { topic: "room" })
        .await
        .unwrap();
    let leave: PresenceNotice = notice(&mut a, "presence.leave").await;
    assert_eq!(leave.member.user, "bob");
    let only: PresenceGetResult = a
        .call(
            "presence.get",
            &PresenceGetParams {
                topic: "room",
                cursor: None,
                limit: None,
            },
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(only.members.len(), 1);
    // presence.set with an oversized info.
    let big = raw(&minicbor::bytes::ByteVec::from(vec![0u8; 2000]));
    let err = a
        .call(
            "presence.set",
            &PresenceSetParams {
                info: big.as_raw_ref(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PayloadTooLarge);
}
