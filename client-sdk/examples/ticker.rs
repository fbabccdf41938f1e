//! A publisher and a subscriber with rates printed.
//!
//! Run with:
//!
//! ```sh
//! cargo run -p plexus-server                         # the hub
//! TOKEN=$(cargo run -q -p plexus-server -- token --sub ticker --sub-allow 'demo.>' --pub-allow 'demo.>')
//! cargo run --release -p plexus-client --example ticker -- --token "$TOKEN" sub
//! cargo run --release -p plexus-client --example ticker -- --token "$TOKEN" pub --rate 50
//! ```
//!
//! The subscriber prints events per second and the delivery latency
//! (publisher and subscriber share this machine's clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use plexus_client::protocol::ErrorCode;
use plexus_client::{Client, Error, Event};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// Token from `plexus token`.
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: String,
    /// Topic.
    #[arg(long, default_value = "demo.ticker")]
    topic: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publish ticks.
    Pub {
        /// Ticks per second (the hub allows 100 requests/s per connection
        /// by default; see `--rate-per-sec`).
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
    /// Print the rate and latency of ticks received.
    Sub,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = Client::builder(&args.url)
        .token(args.token)
        .connect()
        .await?;
    match args.mode {
        Mode::Pub { rate } => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            let mut report = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut n, mut sent, mut limited) = (0u64, 0u64, 0u64);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        n += 1;
                        match client.publish(&args.topic, &(n, now_micros())).await {
                            Ok(_) => sent += 1,
                            // The hub's per-connection rate limit (100/s by
                            // default): wait as long as it says.
                            Err(Error::Remote(e)) if e.code == ErrorCode::RateLimited => {
                                limited += 1;
                                let wait = e.retry_after_ms.unwrap_or(10);
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                            }
                            Err(e) => eprintln!("publish failed: {e}"),
                        }
                    }
                    _ = report.tick() => {
                        println!("published {sent}/s (rate-limited {limited})");
                        (sent, limited) = (0, 0);
                    }
                }
            }
        }
        Mode::Sub => {
            let mut sub = client.subscribe(&args.topic).await?;
            let mut report = tokio::time::interval(Duration::from_secs(1));
            let (mut count, mut lat_sum, mut lat_max) = (0u64, 0u64, 0u64);
            loop {
                tokio::select! {
                    event = sub.next() => match event {
                        Some(Event::Message(m)) => {
                            if let Ok((_, sent_at)) = m.data.decode::<(u64, u64)>() {
                                let lat = now_micros().saturating_sub(sent_at);
                                count += 1;
                                lat_sum += lat;
                                lat_max = lat_max.max(lat);
                            }
                        }
                        Some(Event::Lagged(n)) => eprintln!("lagged by {n}"),
                        Some(Event::Ended(e)) => return Err(e.into()),
                        Some(_) => {}
                        None => return Ok(()),
                    },
                    _ = report.tick() => {
                        let avg = lat_sum.checked_div(count).unwrap_or(0);
                        println!("received {count}/s, latency avg {avg} µs max {lat_max} µs");
                        (count, lat_sum, lat_max) = (0, 0, 0);
                    }
                }
            }
        }
    }
}
