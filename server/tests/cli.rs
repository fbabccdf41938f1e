//! The `plexus` binary end to end: `serve` on a fresh data directory
//! generates the development key and prints how to connect, `token` mints a
//! token that the running hub accepts, `config` masks secrets, and SIGTERM
//! drains connections with `closing` and 4008.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bin_support;
use bin_support::plexus;
use std::process::Stdio;
use std::time::Duration;

use plexus_protocol::methods::rpc::{CallParams, ListParams, RegisterParams};
use plexus_protocol::methods::sync::{
    SyncInfoParams, SyncInfoResult, SyncOp, SyncPushParams, SyncPushResult, hlc,
};
use plexus_protocol::methods::{PublishParams, PublishResult, SubscribeParams};
use plexus_testkit::*;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn serve_token_and_sigterm_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = plexus()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut printed = String::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
    {
        printed.push_str(&line);
        printed.push('\n');
        if let Some(rest) = line.split("ws://").nth(1) {
            addr = Some(
                rest.split('/')
                    .next()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
            );
        }
        if line.contains("-- token") && addr.is_some() {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no address printed:\n{printed}"));
    assert!(
        printed.contains("generated a development signing key"),
        "{printed}"
    );
    assert!(printed.contains("plexus-server -- token"), "{printed}");

    let key = data.join("dev-signing-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let token = mint(
        &data,
        &[
            "--sub",
            "alice",
            "--sub-allow",
            "chat.>",
            "--pub-allow",
            "chat.room1",
            "--ttl",
            "10m",
        ],
    )
    .await;
    assert_eq!(token.split('.').count(), 3);

    let (mut c, r) = Client::authed(addr, &token).await;
    assert_eq!(r.user, "alice");
    c.call("subscribe", &SubscribeParams::new("chat.>"))
        .await
        .unwrap();
    let data_item = raw(&"hi");
    let res: PublishResult = c
        .call(
            "publish",
            &PublishParams::new("chat.room1", data_item.as_raw_ref()),
        )
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(res.delivered, 1);
    let err = c
        .call(
            "publish",
            &PublishParams::new("chat.room2", data_item.as_raw_ref()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, plexus_protocol::ErrorCode::Forbidden);

    // Record-sync grants from the command line: `--sync-write` may push
    // and pull, `--sync-read` only pull; anything else is forbidden.
    let token = mint(
        &data,
        &[
            "--sub",
            "alice",
            "--sync-read",
            "user.alice.>",
            "--sync-write",
            "user.alice.notes",
        ],
    )
    .await;
    let (mut s, _) = Client::authed(addr, &token).await;
    let push = |space: &str| {
        SyncPushParams::new(
            space,
            "cli-test",
            1,
            hlc(1_700_000_000_000, 0),
            vec![SyncOp::put("n", "a", b"v".to_vec())],
        )
    };
    let ok: SyncPushResult = s
        .call("sync.push", &push("user.alice.notes"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(ok.position, 1);
    for (method, space) in [
        ("sync.push", "user.alice.todo"),
        ("sync.info", "user.bob.notes"),
    ] {
        let err = if method == "sync.push" {
            s.call(method, &push(space)).await.unwrap_err()
        } else {
            s.call(method, &SyncInfoParams::new(space))
                .await
                .unwrap_err()
        };
        assert_eq!(
            err.code,
            plexus_protocol::ErrorCode::Forbidden,
            "{method} {space}"
        );
    }
    let info: SyncInfoResult = s
        .call("sync.info", &SyncInfoParams::new("user.alice.todo"))
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(info.position, 0);

    // Routed-RPC grants from the command line.
    let token = mint(
        &data,
        &[
            "--sub",
            "svc",
            "--rpc-register",
            "svc.>",
            "--rpc-call",
            "svc.resize",
        ],
    )
    .await;
    let (mut r, _) = Client::authed(addr, &token).await;
    r.call("rpc.register", &RegisterParams::new("svc.resize"))
        .await
        .unwrap();
    let forbidden = [
        r.call("rpc.register", &RegisterParams::new("other.x"))
            .await
            .unwrap_err(),
        r.call("rpc.call", &CallParams::new("svc.other"))
            .await
            .unwrap_err(),
        r.call("rpc.list", &ListParams::default())
            .await
            .unwrap_err(),
    ];
    for err in forbidden {
        assert_eq!(err.code, plexus_protocol::ErrorCode::Forbidden, "{err:?}");
    }

    // SIGTERM: the client gets `closing` and 4008, the process exits 0.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    c.expect_close(4008, true).await;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn config_masks_secrets_and_help_names_env_vars() {
    let out = plexus()
        .args([
            "config",
            "--jwt-secret",
            "super-secret-value-that-must-not-show",
        ])
        .env("PLEXUS_MAX_PAYLOAD", "1234")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("super-secret-value"), "{text}");
    assert!(text.contains("jwt-secret = \"********\""), "{text}");
    assert!(
        text.contains("max-payload = 1234"),
        "env fallback applies: {text}"
    );

    let help = plexus().arg("--help").output().await.unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for env in [
        "PLEXUS_LISTEN",
        "PLEXUS_DATA_DIR",
        "PLEXUS_JWT_SECRET",
        "PLEXUS_MAX_FRAME_SIZE",
        "PLEXUS_RATE_PER_SEC",
    ] {
        assert!(help.contains(env), "--help shows {env}");
    }
}

#[tokio::test]
async fn settings_that_cannot_work_together_stop_the_hub_with_a_message() {
    // Item 5: a 2048-byte frame cannot carry a 1900-byte payload with its
    // topic, user and envelope.
    let dir = tempfile::tempdir().unwrap();
    let out = plexus()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-frame-size",
            "2048",
            "--max-payload",
            "1900",
            "--max-topic-len",
            "2000",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    for name in [
        "invalid settings",
        "max-payload",
        "max-frame-size",
        "max-topic-len",
    ] {
        assert!(err.contains(name), "{name} in {err}");
    }
}

#[tokio::test]
async fn durable_streams_from_the_config_file_migrate_list_and_survive_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("plexus.toml");
    std::fs::write(
        &file,
        "max-payload = 4096\n[storage]\ncommit-max-batch = 64\n\
         [[streams]]\npattern = \"orders.>\"\nmax-events = 1000\ndurability = \"committed\"\n",
    )
    .unwrap();
    let secret = std::str::from_utf8(SECRET).unwrap();

    // `plexus config` shows the streams settings.
    let out = plexus()
        .arg("config")
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("commit-max-batch = 64"), "{text}");
    assert!(
        text.contains(
            "[[streams]]\npattern = \"orders.>\"\nmax-events = 1000\ndurability = \"committed\""
        ),
        "{text}"
    );

    // `--no-migrate` on a fresh database refuses to start; `plexus
    // migrate` applies the migrations, then has nothing to do.
    let out = plexus()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-migrate", "true"])
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot open the database"), "{err}");
    for expect in ["applied migrations", "up to date"] {
        let out = plexus()
            .arg("migrate")
            .arg("--data-dir")
            .arg(&data)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(expect), "{text}");
    }

    let mut child = plexus()
        .args(["serve", "--listen", "127.0.0.1:0", "--no-migrate", "true"])
        .arg("--jwt-secret")
        .arg(secret)
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    let mut durable = None;
    while durable.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the hub prints its start lines");
        if let Some(rest) = line.split("ws://").nth(1) {
            addr = rest
                .split('/')
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .ok();
        }
        if line.starts_with("durable streams:") {
            durable = Some(line);
        }
    }
    let durable = durable.unwrap();
    assert!(
        durable.contains("1 namespace configured") && durable.contains("plexus.db"),
        "{durable}"
    );
    let (mut c, _) = Client::authed(addr.unwrap(), &token("alice")).await;
    let data_item = raw(&"hi");
    for i in 1..=3u64 {
        let res: PublishResult = c
            .call(
                "publish",
                &PublishParams::new("orders.1", data_item.as_raw_ref()),
            )
            .await
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(res.offset, Some(i));
        assert_eq!(
            res.durability,
            Some(plexus_protocol::methods::Durability::Committed)
        );
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    c.expect_close(4008, true).await;
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");

    // `plexus streams` reads the database.
    let out = plexus()
        .arg("streams")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("orders.1 "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // topic, events, bytes, first, last, epoch
    assert_eq!((cols[1], cols[3], cols[4]), ("3", "1", "3"), "{row}");
    assert_eq!(cols[5].len(), 16);
    assert!(text.contains("orders.>"), "{text}");
    assert!(text.contains("1 durable topics"), "{text}");

    // No database yet: said so, nothing created.
    let empty = dir.path().join("empty");
    let out = plexus()
        .arg("streams")
        .arg("--data-dir")
        .arg(&empty)
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("no database")
    );
    assert!(!empty.exists());
}

/// Mints a token with `plexus token ARGS --data-dir DATA`.
async fn mint(data: &std::path::Path, args: &[&str]) -> String {
    let out = plexus()
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
