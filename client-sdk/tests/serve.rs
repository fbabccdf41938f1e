//! `Client::serve` against scripted servers that send requests to the
//! client (decision P20) over real sockets: answers, `method_not_found`,
//! the hub's `cancel`, the concurrency bound, streamed answers, panics,
//! and served methods kept across reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{Backoff, Client, ClientBuilder, RawValue};
use plexus_conformance::script::{Peer, ScriptedServer};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{CancelParams, Empty};
use plexus_protocol::{ErrorCode, Frame, Response, WireError};
use tokio::sync::{mpsc, oneshot};

/// How long a test waits for an event before it fails.
const WAIT: Duration = Duration::from_secs(10);

fn builder(url: String) -> ClientBuilder {
    Client::builder(url)
        .token("scripted-token")
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
}

/// Sends a request frame `[0, id, method, params]` to the client.
async fn request<P: minicbor::Encode<()>>(p: &mut Peer, id: u64, method: &str, params: &P) {
    p.send_raw(encode_request(id, method, params).unwrap())
        .await;
}

/// The next response from the client, skipping everything else.
async fn response(p: &mut Peer) -> Response {
    loop {
        match tokio::time::timeout(WAIT, p.recv()).await.unwrap() {
            Some(Frame::Response(r)) => return r,
            Some(_) => {}
            None => panic!("the client went away"),
        }
    }
}

/// Answers the client's `ready` call: by then every `serve` made before it
/// is registered (commands are handled in order).
async fn wait_ready(p: &mut Peer) {
    let r = tokio::time::timeout(WAIT, p.recv_request())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.method, "ready");
    p.respond(r.id, &Empty {}).await;
}

/// Carries values out of a script (which runs once per connection).
fn channel<T: Send + 'static>() -> (
    Arc<Mutex<mpsc::UnboundedSender<T>>>,
    mpsc::UnboundedReceiver<T>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Mutex::new(tx)), rx)
}

#[tokio::test]
async fn served_methods_answer_and_others_get_method_not_found() {
    let (tx, mut rx) = channel::<Response>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            request(&mut p, 1, "app.echo", &"hello").await;
            request(&mut p, 2, "app.nobody", &Empty {}).await;
            request(&mut p, 3, "app.fails", &Empty {}).await;
            for _ in 0..3 {
                let r = response(&mut p).await;
                tx.lock().unwrap().send(r).unwrap();
            }
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.serve("app.echo", |params: RawValue| async move { Ok(params) })
        .await
        .unwrap();
    c.serve("app.fails", |_| async {
        Err(WireError::new(ErrorCode::Forbidden, "not you"))
    })
    .await
    .unwrap();
    // Serving a method twice is refused.
    let again = c
        .serve("app.echo", |p: RawValue| async move { Ok(p) })
        .await;
    assert_eq!(again.unwrap_err().code(), Some(&ErrorCode::Conflict));
    c.call("ready", &Empty {}).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    answers.sort_by_key(|r| r.id);
    assert_eq!(
        answers[0]
            .outcome
            .as_ref()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "hello"
    );
    assert_eq!(
        answers[1].outcome.as_ref().unwrap_err().code,
        ErrorCode::MethodNotFound
    );
    let err = answers[2].outcome.as_ref().unwrap_err();
    assert_eq!(
        (&err.code, err.message.as_str()),
        (&ErrorCode::Forbidden, "not you")
    );
}

/// Reports when it is dropped.
struct DropFlag(Option<oneshot::Sender<()>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn the_hubs_cancel_drops_the_handler_and_answers_cancelled() {
    let (tx, mut rx) = channel::<Response>();
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let started_rx = Arc::new(Mutex::new(Some(started_rx)));
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        let started = started_rx.lock().unwrap().take();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            request(&mut p, 41, "app.slow", &Empty {}).await;
            // Wait until the handler runs, then withdraw the request.
            tokio::time::timeout(WAIT, started.unwrap())
                .await
                .unwrap()
                .unwrap();
            p.notify("cancel", &CancelParams { id: 41 }).await;
            let r = response(&mut p).await;
            tx.lock().unwrap().send(r).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let c = builder(server.url()).connect().await.unwrap();
    c.serve("app.slow", move |_| {
        let flag = DropFlag(dropped_tx.lock().unwrap().take());
        let started = started_tx.lock().unwrap().take();
        async move {
            let _flag = flag;
            if let Some(s) = started {
                let _ = s.send(());
            }
            std::future::pending::<()>().await;
            Ok(RawValue::null())
        }
    })
    .await
    .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.id, 41);
    assert_eq!(r.outcome.unwrap_err().code, ErrorCode::Cancelled);
    tokio::time::timeout(WAIT, dropped_rx)
        .await
        .expect("the handler's future was dropped")
        .unwrap();
}

#[tokio::test]
async fn requests_beyond_max_served_are_answered_too_many_requests() {
    let (tx, mut rx) = channel::<Response>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            for id in 1..=3 {
                request(&mut p, id, "app.block", &Empty {}).await;
            }
            let r = response(&mut p).await;
            tx.lock().unwrap().send(r).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).max_served(2).connect().await.unwrap();
    c.serve("app.block", |_| async {
        std::future::pending::<()>().await;
        Ok(RawValue::null())
    })
    .await
    .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.id, 3, "the first two run, the third is refused");
    assert_eq!(r.outcome.unwrap_err().code, ErrorCode::TooManyRequests);
}

#[tokio::test]
async fn a_streamed_answer_is_chunks_ending_with_a_final_one() {
    let (tx, mut rx) = channel::<Vec<(u64, u64, bool, u8)>>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            request(&mut p, 7, "app.count", &3u8).await;
            let mut chunks = Vec::new();
            while chunks.last().is_none_or(|c: &(u64, u64, bool, u8)| !c.2) {
                match tokio::time::timeout(WAIT, p.recv()).await.unwrap() {
                    Some(Frame::Chunk(c)) => {
                        chunks.push((c.id, c.seq, c.fin, c.data.decode::<u8>().unwrap()));
                    }
                    Some(other) => panic!("{other:?}"),
                    None => panic!("the client went away"),
                }
            }
            tx.lock().unwrap().send(chunks).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.serve_stream("app.count", |params: RawValue| {
        let n = params.decode::<u8>().unwrap_or(0);
        futures_util::stream::iter((0..n).map(|i| Ok(RawValue::encode(&i).unwrap())))
    })
    .await
    .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let chunks = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        chunks,
        [(7, 0, false, 0), (7, 1, false, 1), (7, 2, true, 2)]
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_internal() {
    let (tx, mut rx) = channel::<Response>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            request(&mut p, 9, "app.panics", &Empty {}).await;
            let r = response(&mut p).await;
            tx.lock().unwrap().send(r).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.serve("app.panics", |_| async {
        if true {
            panic!("handler bug");
        }
        Ok(RawValue::null())
    })
    .await
    .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.outcome.unwrap_err().code, ErrorCode::Internal);
    // The client carries on.
    assert_eq!(
        *c.state().borrow(),
        plexus_client::ConnectionState::Connected
    );
}

#[tokio::test]
async fn served_methods_survive_a_reconnect_and_unserve_stops() {
    let (tx, mut rx) = channel::<Response>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            if p.index == 0 {
                wait_ready(&mut p).await;
                p.drop_connection();
                return;
            }
            // The client has not called anything on this connection: the
            // method is served because it was kept.
            request(&mut p, 1, "app.echo", &"again").await;
            let r = response(&mut p).await;
            tx.lock().unwrap().send(r).unwrap();
            wait_ready(&mut p).await;
            request(&mut p, 2, "app.echo", &"gone").await;
            let r = response(&mut p).await;
            tx.lock().unwrap().send(r).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.serve("app.echo", |p: RawValue| async move { Ok(p) })
        .await
        .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.outcome.unwrap().decode::<String>().unwrap(), "again");
    c.unserve("app.echo").await.unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.outcome.unwrap_err().code, ErrorCode::MethodNotFound);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_stream_handler_is_read_as_the_socket_takes_its_chunks() {
    // A large streamed answer to a hub that reads it all: every chunk
    // arrives in order, none is lost to a full buffer.
    const CHUNKS: u32 = 2_000;
    let (tx, mut rx) = channel::<u32>();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let tx = tx.clone();
        async move {
            p.accept_auth().await;
            wait_ready(&mut p).await;
            request(&mut p, 1, "app.big", &Empty {}).await;
            let mut seen = 0u32;
            loop {
                match tokio::time::timeout(WAIT, p.recv()).await.unwrap() {
                    Some(Frame::Chunk(c)) => {
                        assert_eq!(c.seq, u64::from(seen));
                        assert_eq!(c.data.decode::<u32>().unwrap(), seen);
                        seen += 1;
                        if c.fin {
                            break;
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
            tx.lock().unwrap().send(seen).unwrap();
            p.stall(WAIT).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.serve_stream("app.big", |_| {
        futures_util::stream::iter(0..CHUNKS).map(|i| Ok(RawValue::encode(&i).unwrap()))
    })
    .await
    .unwrap();
    c.call("ready", &Empty {}).await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap(),
        CHUNKS
    );
}
