//! Who is online: join a room's presence and print joins and leaves.
//!
//! Run with:
//!
//! ```sh
//! cargo run -p plexus-server                         # the hub
//! TOKEN=$(cargo run -q -p plexus-server -- token --sub alice --sub-allow 'demo.>' --pub-allow 'demo.>' --presence)
//! cargo run -p plexus-client --example presence -- --token "$TOKEN" --status "at my desk"
//! ```
//!
//! Start it in a second terminal with another `--sub` to see the join;
//! stop it (ctrl-c) to see the leave.

use clap::Parser;
use futures_util::StreamExt;
use plexus_client::{Client, Event};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// Token from `plexus token` (with `--presence`).
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: String,
    /// The room.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Status shown to others.
    #[arg(long, default_value = "online")]
    status: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(&args.url)
        .token(args.token)
        .connect()
        .await?;
    let topic = format!("demo.presence.{}", args.room);
    client.presence_set(&args.status).await?;
    let mut sub = client.subscribe_presence(&topic).await?;
    println!("online in {topic}:");
    for m in client.presence_get(&topic).await? {
        let status = m
            .info
            .and_then(|i| i.decode::<String>().ok())
            .unwrap_or_default();
        println!("  {} ({status})", m.user);
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = sub.next() => match event {
                Some(Event::Join(m)) => {
                    let status = m.info.and_then(|i| i.decode::<String>().ok()).unwrap_or_default();
                    println!("+ {} ({status})", m.user);
                }
                Some(Event::Leave(m)) => println!("- {}", m.user),
                Some(Event::Ended(e)) => {
                    eprintln!("[ended: {e}]");
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    client.close().await;
    Ok(())
}
