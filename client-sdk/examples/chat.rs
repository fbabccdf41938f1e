//! Two terminals chatting through a local hub.
//!
//! Run with (in each terminal, with a token from `plexus token`, see below):
//!
//! ```sh
//! cargo run -p plexus-server                         # terminal 0: the hub
//! TOKEN=$(cargo run -q -p plexus-server -- token --sub alice --sub-allow 'demo.>' --pub-allow 'demo.>' --presence)
//! cargo run -p plexus-client --example chat -- --token "$TOKEN"   # terminal 1
//! ```
//!
//! and the same with `--sub bob` in terminal 2. Type lines; each is
//! published on `demo.chat.<room>` and printed by everyone else in the room.

use clap::Parser;
use futures_util::StreamExt;
use plexus_client::{Client, ConnectionState, Event};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// Token from `plexus token`.
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: String,
    /// Chat room.
    #[arg(long, default_value = "lobby")]
    room: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(&args.url)
        .token(args.token)
        .connect()
        .await?;
    let topic = format!("demo.chat.{}", args.room);
    let mut sub = client.subscribe(&topic).await?;
    println!("joined {topic}; type a line and press enter (ctrl-d to leave)");

    // Print connection changes (reconnects) as they happen.
    let mut state = client.state();
    tokio::spawn(async move {
        while state.changed().await.is_ok() {
            let s = state.borrow_and_update().clone();
            if !matches!(s, ConnectionState::Connected) {
                eprintln!("[{s:?}]");
            }
        }
    });

    let printer = tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            match event {
                Event::Message(m) => {
                    let who = m.from.as_deref().unwrap_or("?");
                    let text = m
                        .data
                        .decode::<String>()
                        .unwrap_or_else(|_| "<not text>".into());
                    println!("{who}: {text}");
                }
                Event::Lagged(n) => eprintln!("[missed {n} messages]"),
                Event::Ended(e) => {
                    eprintln!("[subscription ended: {e}]");
                    break;
                }
                _ => {}
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // Without echo: our own lines are not printed back to us.
        let data = plexus_client::RawValue::encode(&line)?;
        if let Err(e) = client.publish_raw(&topic, &data, false).await {
            eprintln!("[not sent: {e}]");
        }
    }
    client.close().await;
    printer.abort();
    Ok(())
}
