//! A shared shopping list, offline-first: two terminals edit the same list
//! in their own local replica (a SQLite file), go offline, keep editing,
//! and converge when they are back online.
//!
//! Run with:
//!
//! ```sh
//! cargo run -p plexus-server                                         # terminal 0: the hub
//! TOKEN=$(cargo run -q -p plexus-server -- token --sub alice --sync-write 'demo.lists.>')
//! cargo run -p plexus-client --features local-replica --example sync_list -- \
//!     --token "$TOKEN" --replica alice.db --id alice                  # terminal 1
//! cargo run -p plexus-client --features local-replica --example sync_list -- \
//!     --token "$TOKEN" --replica bob.db --id bob                      # terminal 2
//! ```
//!
//! Type `add milk`, `done 1`, `rm 1`, `ls`, `offline`, `online`, `quit`.
//! `offline` stops syncing (or stop the hub: the client reconnects by
//! itself); edits apply locally at once and wait in the replica's queue;
//! `online` pushes them, pulls the other side's, and prints the list.
//! Marking an item done is a field patch, so two people marking different
//! items (or the same one) offline merge instead of overwriting each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use plexus_client::{Client, Replica};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// Token from `plexus token … --sync-write 'demo.lists.>'`.
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: String,
    /// The space (the list).
    #[arg(long, default_value = "demo.lists.groceries")]
    space: String,
    /// This replica's SQLite file.
    #[arg(long, default_value = "sync-list.db")]
    replica: PathBuf,
    /// This replica's client id (keep it with the file).
    #[arg(long)]
    id: String,
}

async fn print(list: &Replica) -> Result<(), plexus_client::Error> {
    for item in list.list("items").await? {
        let text = String::from_utf8_lossy(item.fields.get("text").map_or(&[][..], |v| v));
        let done = item.fields.get("done").is_some_and(|v| v == b"1");
        let pending = if item.pending { " (not synced)" } else { "" };
        println!(
            "  {} [{}] {text}{pending}",
            item.id,
            if done { "x" } else { " " }
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(args.url)
        .token(args.token)
        .connect()
        .await?;
    let list = Replica::open(client.space_as(args.space, args.id.clone()), &args.replica).await?;
    let mut background = Some(list.spawn_background(Duration::from_secs(2)));
    print(&list).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let (cmd, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        match cmd {
            "add" => {
                // Ids unique across replicas: client id and the HLC's
                // milliseconds (since 2023, to keep them short).
                let ms = (list.space().now() >> 16).saturating_sub(1_700_000_000_000);
                let id = format!("{}-{ms}", args.id);
                let fields = BTreeMap::from([
                    ("text".to_owned(), Some(rest.as_bytes().to_vec())),
                    ("done".to_owned(), Some(b"0".to_vec())),
                ]);
                list.patch("items", &id, fields).await?;
            }
            "done" => {
                let fields = BTreeMap::from([("done".to_owned(), Some(b"1".to_vec()))]);
                list.patch("items", rest, fields).await?;
            }
            "rm" => list.delete("items", rest).await?,
            "offline" => {
                if let Some(task) = background.take() {
                    task.abort();
                }
                println!("offline: edits stay local");
            }
            "online" => {
                let report = list.sync().await?;
                println!(
                    "synced: pushed {}, pulled {}, repaired {:?}",
                    report.pushed, report.pulled, report.repaired
                );
                background.get_or_insert_with(|| list.spawn_background(Duration::from_secs(2)));
            }
            "quit" => break,
            "ls" | "" => {}
            other => println!("unknown command {other:?}"),
        }
        print(&list).await?;
    }
    Ok(())
}
