//! A durable subscriber that survives reconnects *and* its own restarts,
//! and an idempotent publisher, on a hub with a durable namespace.
//!
//! Run with:
//!
//! ```sh
//! printf '[[streams]]\npattern = "demo.orders.>"\n' > /tmp/streams.toml
//! cargo run -p plexus-server -- --config /tmp/streams.toml      # terminal 0: the hub
//! TOKEN=$(cargo run -q -p plexus-server -- token --sub alice --sub-allow 'demo.>' --pub-allow 'demo.>')
//! cargo run -p plexus-client --example durable -- --token "$TOKEN" --publish 5
//! ```
//!
//! Run it again (or stop the hub for a while and start it again): it
//! resumes after the last event it printed, from the positions it keeps in
//! `--positions`, and prints each event once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::StreamExt;
use plexus_client::{Client, DurableEvent, PositionStore, StreamPosition};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// Token from `plexus token`.
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: String,
    /// Topic or pattern inside the durable namespace.
    #[arg(long, default_value = "demo.orders.>")]
    pattern: String,
    /// Publish this many orders on `demo.orders.eu` first.
    #[arg(long, default_value_t = 0)]
    publish: u32,
    /// Where positions are kept between runs.
    #[arg(long, default_value = "durable-positions.txt")]
    positions: PathBuf,
}

/// Positions in a small text file, one `key epoch last` line each,
/// rewritten on every save (fine for an example; a real app would batch).
struct FileStore {
    path: PathBuf,
    map: Mutex<HashMap<String, StreamPosition>>,
}

impl FileStore {
    fn open(path: PathBuf) -> FileStore {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let map = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (key, epoch, last) = (f.next()?, f.next()?, f.next()?.parse().ok()?);
                let epoch = (epoch != "-").then(|| epoch.into());
                Some((key.to_owned(), StreamPosition::new(epoch, last)))
            })
            .collect();
        FileStore {
            path,
            map: Mutex::new(map),
        }
    }
}

impl PositionStore for FileStore {
    fn load(&self, key: &str) -> Option<StreamPosition> {
        self.map.lock().ok()?.get(key).cloned()
    }

    fn save(&self, key: &str, position: &StreamPosition) {
        let Ok(mut map) = self.map.lock() else { return };
        map.insert(key.to_owned(), position.clone());
        let text: String = map
            .iter()
            .map(|(k, p)| format!("{k} {} {}\n", p.epoch.as_deref().unwrap_or("-"), p.last))
            .collect();
        if let Err(e) = std::fs::write(&self.path, text) {
            eprintln!("cannot save positions: {e}");
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(&args.url)
        .token(args.token)
        .position_store(Arc::new(FileStore::open(args.positions)))
        .connect()
        .await?;

    // Resumes from the stored position (or starts now the first time).
    let mut orders = client.subscribe_durable(&args.pattern).await?;
    println!("following {} (ctrl-c to stop)", args.pattern);
    for n in 1..=args.publish {
        let ack = client
            .publish_durable("demo.orders.eu", &format!("order {n}"))
            .await?;
        println!(
            "published order {n}: offset {:?}, {:?}",
            ack.offset, ack.durability
        );
    }

    while let Some(event) = orders.next().await {
        match event {
            DurableEvent::Message(m) => println!(
                "{} #{} (position {}): {:?}",
                m.topic,
                m.offset,
                m.position,
                m.data.decode::<String>().unwrap_or_default()
            ),
            DurableEvent::Recovered { count, .. } => println!("[caught up: {count} missed]"),
            DurableEvent::TooOld { earliest, .. } => {
                println!("[too old: history starts at {earliest:?}; resync needed]");
            }
            DurableEvent::Reset { epoch, .. } => println!("[history reset: new epoch {epoch}]"),
            DurableEvent::Ended(e) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}
