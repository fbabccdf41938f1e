//! An application embedding the hub owns the process-wide metrics recorder
//! (decision H6): starting a `Server` installs none, so the application can
//! install its own afterwards, and without a handle `/metrics` is not
//! served.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use plexus_server::Server;
use plexus_server::auth::Authenticator;
use plexus_testkit::{Client, auth_settings, test_config, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_library_installs_no_metrics_recorder() {
    let config = test_config();
    let auth = Authenticator::new(auth_settings(&config)).unwrap();
    let server = Server::start(config, auth).await.unwrap();
    let (mut c, _) = Client::authed(server.local_addr(), &token("alice")).await;
    c.call("ping", &plexus_protocol::methods::Empty {})
        .await
        .unwrap();
    // The application's own recorder: refused if one were installed.
    assert!(metrics::set_global_recorder(metrics::NoopRecorder).is_ok());
    let mut s = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    drop(c);
    assert_eq!(server.shutdown().await, 0);
}
