//! The client commands of the `plexus` binary end to end: each test starts
//! a real `plexus serve` on `127.0.0.1:0` with a fresh data directory (so
//! it generates its development key), and runs `plexus pub`, `sub`,
//! `call`, `history`, `sync pull`, `rpc call` and `rpc serve` against it
//! as separate processes over real sockets. No token is passed: every
//! command mints its own from the development key, which also checks that
//! it asks for the capabilities it needs. Waits are for lines a process
//! prints (`subscribed to …`, `serving …`) or for its exit, never sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bin_support;
use bin_support::{BIN, plexus};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use plexus_protocol::methods::sync::SyncOp;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

/// The longest any step waits (a debug build on a loaded machine).
const WAIT: Duration = Duration::from_secs(30);

/// A running `plexus serve` with a durable namespace `orders.>` and record
/// sync on; killed when dropped.
struct Hub {
    _child: Child,
    url: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Hub {
    async fn start() -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = dir.path().join("plexus.toml");
        std::fs::write(&file, "[[streams]]\npattern = \"orders.>\"\n").unwrap();
        let mut child = plexus()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = None;
        loop {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .expect("the hub prints its start lines in time")
                .unwrap()
                .expect("the hub prints its address and its key");
            if let Some(rest) = line.split("ws://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                url = Some(format!("ws://{addr}"));
            }
            // The development-key line is the last one it prints.
            if line.contains("development signing key") {
                break;
            }
        }
        // Keep reading, so that the hub never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Hub {
            _child: child,
            url: url.expect("the hub printed its ws:// address"),
            data,
            _dir: dir,
        }
    }

    /// `plexus ARGS…` pointed at this hub (through `PLEXUS_URL` and
    /// `PLEXUS_DATA_DIR`, so that `rpc serve -- CMD` needs no flags after
    /// its command).
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = plexus();
        c.args(args)
            .env("PLEXUS_URL", &self.url)
            .env("PLEXUS_DATA_DIR", &self.data)
            .stdin(Stdio::null());
        c
    }

    /// Runs `plexus ARGS…` to its end.
    async fn run(&self, args: &[&str]) -> Output {
        output(self.cli(args)).await
    }
}

async fn output(mut c: Command) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(WAIT, c.output())
        .await
        .expect("the command ends in time")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Its stdout as JSON lines, after checking it succeeded.
fn json_lines(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(o));
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// Reads `stderr` until a line containing `needle`.
async fn wait_for(stderr: &mut tokio::io::Lines<BufReader<ChildStderr>>, needle: &str) {
    let mut seen = String::new();
    loop {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; stderr so far:\n{seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stderr ended without {needle:?}:\n{seen}"));
        if line.contains(needle) {
            return;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
}

/// Spawns a long-running command and waits until it prints `ready` on
/// stderr; the rest of its stderr is drained in the background.
async fn spawn_ready(mut c: Command, ready: &str) -> Child {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for(&mut err, ready).await;
    tokio::spawn(async move { while let Ok(Some(_)) = err.next_line().await {} });
    child
}

#[tokio::test]
async fn published_messages_reach_a_subscriber_as_json_lines() {
    let hub = Hub::start().await;
    let sub = spawn_ready(
        hub.cli(&["sub", "demo.>", "--count", "8", "--json"]),
        "subscribed to demo.>",
    )
    .await;

    // DATA that parses as JSON is JSON; anything else is a text string.
    let acks = json_lines(&hub.run(&["pub", "demo.a", r#"{"n":1}"#]).await);
    assert_eq!(acks, [json!({"topic": "demo.a", "delivered": 1})]);
    let acks = json_lines(&hub.run(&["pub", "demo.b", "hello world"]).await);
    assert_eq!(acks, [json!({"topic": "demo.b", "delivered": 1})]);

    // Without DATA, each line of standard input is one message.
    let mut c = hub.cli(&["pub", "demo.c"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"[2]\nnot json\n").await.unwrap();
    drop(stdin);
    let o = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json_lines(&o).len(), 2);

    // --count repeats, --rate paces (1000/s: no noticeable wait).
    let o = hub
        .run(&["pub", "demo.d", "7", "--count", "3", "--rate", "1000"])
        .await;
    assert_eq!(
        json_lines(&o),
        vec![json!({"topic": "demo.d", "delivered": 1}); 3]
    );
    // --quiet prints nothing.
    let o = hub.run(&["pub", "demo.e", "true", "--quiet"]).await;
    assert!(o.status.success() && o.stdout.is_empty(), "{o:?}");

    let o = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .expect("sub exits after --count events")
        .unwrap();
    let text = stdout(&o);
    // One object per line, keys in a fixed order.
    assert_eq!(
        text.lines().next(),
        Some(r#"{"topic":"demo.a","from":"plexus-cli","data":{"n":1}}"#)
    );
    let data: Vec<(String, Value)> = json_lines(&o)
        .into_iter()
        .map(|v| (v["topic"].as_str().unwrap().to_owned(), v["data"].clone()))
        .collect();
    let expect = [
        ("demo.a", json!({"n": 1})),
        ("demo.b", json!("hello world")),
        ("demo.c", json!([2])),
        ("demo.c", json!("not json")),
        ("demo.d", json!(7)),
        ("demo.d", json!(7)),
        ("demo.d", json!(7)),
        ("demo.e", json!(true)),
    ];
    let expect: Vec<(String, Value)> = expect.into_iter().map(|(t, v)| (t.to_owned(), v)).collect();
    assert_eq!(data, expect);
}

#[tokio::test]
async fn durable_publish_history_and_a_subscription_from_an_offset() {
    let hub = Hub::start().await;
    let acks = json_lines(
        &hub.run(&[
            "pub",
            "orders.eu",
            r#"{"sku":"A"}"#,
            "--durable",
            "--count",
            "3",
        ])
        .await,
    );
    let offsets: Vec<u64> = acks.iter().map(|a| a["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert!(acks.iter().all(|a| a["duplicate"] == json!(false)));

    let all = json_lines(&hub.run(&["history", "orders.eu"]).await);
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0],
        json!({"topic": "orders.eu", "offset": 1, "position": 1, "from": "plexus-cli",
               "data": {"sku": "A"}})
    );
    let page = json_lines(
        &hub.run(&["history", "orders.eu", "--since", "2", "--limit", "1"])
            .await,
    );
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["offset"], 2);
    let newest = json_lines(
        &hub.run(&["history", "orders.eu", "--backward", "--limit", "2"])
            .await,
    );
    let offsets: Vec<&Value> = newest.iter().map(|e| &e["offset"]).collect();
    assert_eq!(offsets, [3, 2]);

    // A durable subscription from offset 2 replays 2 and 3.
    let o = hub
        .run(&["sub", "orders.eu", "--since", "2", "--count", "2", "--json"])
        .await;
    let events = json_lines(&o);
    let offsets: Vec<&Value> = events.iter().map(|e| &e["offset"]).collect();
    assert_eq!(offsets, [2, 3]);
    assert!(
        stderr(&o).contains("subscribed to orders.eu (durable)"),
        "{}",
        stderr(&o)
    );

    // History in diagnostic notation keeps CBOR as it is.
    let o = hub
        .run(&["history", "orders.eu", "--limit", "1", "--diag"])
        .await;
    assert!(o.status.success());
    assert_eq!(
        stdout(&o).trim_end(),
        r#"{"topic":"orders.eu","offset":1,"position":1,"from":"plexus-cli","data":{"sku":"A"}}"#
    );

    // A durable publish on a topic that is not durable: the hub's code.
    let o = hub.run(&["pub", "demo.x", "1", "--durable"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid_params"), "{}", stderr(&o));
}

#[tokio::test]
async fn call_prints_results_and_errors_name_their_code_and_exit_non_zero() {
    let hub = Hub::start().await;
    let o = hub.run(&["call", "ping", r#"{"a":[1,2]}"#]).await;
    assert_eq!(json_lines(&o), [json!({"a": [1, 2]})]);
    let o = hub.run(&["call", "ping"]).await;
    assert_eq!(json_lines(&o), [Value::Null]);
    // Diagnostic notation in and out: what JSON cannot carry survives.
    let o = hub.run(&["call", "ping", "[1, h'01ff']", "--diag"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim_end(), "[1,h'01ff']");
    // Typed maps need integer keys; the minted token grants `sub` on the
    // topic the params name.
    let o = hub
        .run(&["call", "presence.get", r#"{0: "demo.room"}"#])
        .await;
    assert_eq!(json_lines(&o), [json!({"0": []})]);
    let o = hub.run(&["call", "history", r#"{0: "orders.eu"}"#]).await;
    let page = &json_lines(&o)[0];
    assert_eq!(
        (&page["0"], &page["3"], &page["4"]),
        (&json!([]), &json!(1), &json!(0))
    );

    // An unknown method: the code on stderr, exit status 1.
    let o = hub.run(&["call", "no.such.method"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("method_not_found"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    // A method the SDK manages: refused before connecting, exit 2.
    let o = hub.run(&["call", "subscribe", r#"{0: "demo.x"}"#]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("plexus sub"), "{}", stderr(&o));
    // Params that are neither JSON nor diagnostic notation: exit 2.
    let o = hub.run(&["call", "ping", "{0: "]).await;
    assert_eq!(o.status.code(), Some(2));

    // A hub that is not there: the URL that failed, exit 3.
    let mut c = hub.cli(&["call", "ping"]);
    c.env("PLEXUS_URL", "ws://127.0.0.1:1/v1/ws");
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("cannot connect to ws://127.0.0.1:1/v1/ws"),
        "{}",
        stderr(&o)
    );
    // A token the hub refuses: exit 3.
    let o = hub.run(&["call", "ping", "--token", "not-a-token"]).await;
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // No token and no development key to mint one: a hint, exit 2.
    let empty = tempfile::tempdir().unwrap();
    let mut c = hub.cli(&["call", "ping"]);
    c.env("PLEXUS_DATA_DIR", empty.path());
    let o = output(c).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("dev-signing-key"), "{}", stderr(&o));
    assert!(
        !empty.path().join("dev-signing-key").exists(),
        "a client never creates the development key"
    );
}

#[tokio::test]
async fn rpc_serve_answers_calls_with_a_command_and_stops_on_sigterm() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("slow.pid");
    let echo = spawn_ready(
        hub.cli(&["rpc", "serve", "svc.echo", "--", "cat"]),
        "serving svc.echo",
    )
    .await;
    let _text = spawn_ready(
        hub.cli(&["rpc", "serve", "svc.text", "--", "echo", "hello"]),
        "serving svc.text",
    )
    .await;
    let _fail = spawn_ready(
        hub.cli(&["rpc", "serve", "svc.fail", "--", "sh", "-c", "exit 3"]),
        "serving svc.fail",
    )
    .await;
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let _slow = spawn_ready(
        hub.cli(&[
            "rpc",
            "serve",
            "svc.slow",
            "--timeout",
            "300ms",
            "--",
            "sh",
            "-c",
            &script,
        ]),
        "serving svc.slow",
    )
    .await;

    // `cat` answers with the params' JSON.
    let o = hub
        .run(&["rpc", "call", "svc.echo", r#"{"x":[1,"y"]}"#])
        .await;
    assert_eq!(json_lines(&o), [json!({"x": [1, "y"]})]);
    // Output that is not JSON is a text string.
    let o = hub.run(&["rpc", "call", "svc.text"]).await;
    assert_eq!(json_lines(&o), [json!("hello")]);
    // A non-zero exit answers an error.
    let o = hub.run(&["rpc", "call", "svc.fail"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("internal"), "{}", stderr(&o));
    // A command past the per-call timeout is killed before the answer.
    let o = hub.run(&["rpc", "call", "svc.slow"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("timeout"), "{}", stderr(&o));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let alive = std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "the command of a timed-out call is gone");

    // SIGTERM stops serving: exit 0, and the procedure has no callee.
    let pid = echo.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let o = tokio::time::timeout(WAIT, echo.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(o.status.success(), "{:?}", o.status);
    let o = hub.run(&["rpc", "call", "svc.echo", "1"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no_callee"), "{}", stderr(&o));
}

#[tokio::test]
async fn sync_pull_prints_the_records_a_client_pushed() {
    let hub = Hub::start().await;
    let minted = hub
        .run(&["token", "--sub", "tester", "--sync-write", "notes.>"])
        .await;
    assert!(minted.status.success(), "{}", stderr(&minted));
    let client = plexus_client::Client::builder(hub.url.clone())
        .token(stdout(&minted).trim().to_owned())
        .connect()
        .await
        .unwrap();
    let space = client.space("notes.a");
    space
        .push(vec![
            SyncOp::put("items", "1", b"milk".to_vec()),
            SyncOp::put("items", "2", b"eggs".to_vec()),
        ])
        .await
        .unwrap();

    let lines = json_lines(&hub.run(&["sync", "pull", "notes.a"]).await);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first = &lines[0];
    assert_eq!(
        (
            &first["collection"],
            &first["id"],
            &first["version"],
            &first["deleted"]
        ),
        (&json!("items"), &json!("1"), &json!(1), &json!(false))
    );
    // Field values are bytes: base64url in the JSON projection.
    assert_eq!(first["fields"], json!({"": "bWlsaw"}));
    assert_eq!(lines[1]["fields"], json!({"": "ZWdncw"}));
    let summary = &lines[2];
    assert_eq!(
        (&summary["cursor"], &summary["count"]),
        (&json!(2), &json!(2))
    );
    let epoch = summary["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());

    // After the cursor: only what changed since.
    space
        .push(vec![
            SyncOp::put("items", "3", b"tea".to_vec()),
            SyncOp::delete("items", "1"),
        ])
        .await
        .unwrap();
    let lines = json_lines(
        &hub.run(&["sync", "pull", "notes.a", "--since", "2", "--epoch", &epoch])
            .await,
    );
    let changed: Vec<(&Value, &Value)> = lines[..2]
        .iter()
        .map(|r| (&r["id"], &r["deleted"]))
        .collect();
    assert_eq!(
        changed,
        [(&json!("3"), &json!(false)), (&json!("1"), &json!(true))]
    );
    assert_eq!(lines[2]["cursor"], 4);
    client.close().await;

    // Outside the token's space: the hub's code.
    let o = hub
        .run(&["sync", "pull", "other", "--token", stdout(&minted).trim()])
        .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("forbidden"), "{}", stderr(&o));
}

/// Runs `plexus ARGS…` with its stdout on a pseudo-terminal and returns
/// what the terminal showed.
async fn on_a_terminal(hub: &Hub, args: &[&str]) -> String {
    use std::io::Read;
    let pty = nix::pty::openpty(
        None::<&nix::pty::Winsize>,
        None::<&nix::sys::termios::Termios>,
    )
    .unwrap();
    let mut c = std::process::Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PLEXUS_") {
            c.env_remove(k);
        }
    }
    c.args(args)
        .env("PLEXUS_URL", &hub.url)
        .env("PLEXUS_DATA_DIR", &hub.data)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The last copy of the terminal's slave side closes with the
        // command: reading the master side then ends (EIO on Linux).
        drop(c);
        let mut master = std::fs::File::from(pty.master);
        let mut shown = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(shown).unwrap().replace("\r\n", "\n")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn terminal_output_is_for_people_and_piped_output_is_json() {
    let hub = Hub::start().await;
    let shown = on_a_terminal(&hub, &["pub", "demo.t", "hello"]).await;
    assert_eq!(shown, "published to demo.t (delivered to 0)\n");
    let piped = hub.run(&["pub", "demo.t", "hello"]).await;
    assert_eq!(stdout(&piped), "{\"topic\":\"demo.t\",\"delivered\":0}\n");

    // A text result is shown as text on a terminal, a JSON string in a pipe.
    let shown = on_a_terminal(&hub, &["call", "ping", "\"plain text\""]).await;
    assert_eq!(shown, "plain text\n");
    let piped = hub.run(&["call", "ping", "\"plain text\""]).await;
    assert_eq!(stdout(&piped), "\"plain text\"\n");
    // Structured results are indented for people; --json forces JSON lines
    // on a terminal too.
    let shown = on_a_terminal(&hub, &["call", "ping", r#"{"a":1}"#]).await;
    assert_eq!(shown, "{\n  \"a\": 1\n}\n");
    let shown = on_a_terminal(&hub, &["call", "ping", r#"{"a":1}"#, "--json"]).await;
    assert_eq!(shown, "{\"a\":1}\n");

    // Durable history for people: one line per event with its offset.
    let o = hub.run(&["pub", "orders.t", "first", "--durable"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = on_a_terminal(&hub, &["history", "orders.t"]).await;
    assert_eq!(shown, "orders.t offset 1 from plexus-cli: first\n");
}
