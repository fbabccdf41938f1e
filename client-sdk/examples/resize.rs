//! A "resize image" service offered through the hub by two callees, and a
//! caller that streams each resize's progress (routed RPC, `docs/sdk.md`
//! §18).
//!
//! Run with, in three terminals (the hub, the service, the caller):
//!
//! ```sh
//! PLEXUS_JWT_SECRET=resize-demo-secret-0123456789abcdef cargo run -p plexus-server
//! PLEXUS_JWT_SECRET=resize-demo-secret-0123456789abcdef \
//!     cargo run -p plexus-client --example resize -- serve --callees 2
//! PLEXUS_JWT_SECRET=resize-demo-secret-0123456789abcdef \
//!     cargo run -p plexus-client --example resize -- call --images 4
//! ```
//!
//! `serve` opens one connection per callee (two by default) and registers
//! `svc.resize` on each under `least_pending` (`--policy round_robin` to
//! change it); each invocation reports progress as chunks, within the
//! credit the hub grants, and ends with the resized image's name. `call`
//! resizes `--images` images at once and prints each one's progress and
//! which callee did it. Stop a callee with Ctrl-C mid-call: its calls fail
//! with `callee_lost` at once; start it again and it serves again.
//!
//! The example mints its own tokens with the hub's HMAC secret (claims
//! `rpc_register` / `rpc_call`); pass `--token` instead to use one made
//! elsewhere, e.g. by the hub's CLI with its development key:
//!
//! ```sh
//! PLEXUS_TOKEN=$(cargo run -q -p plexus-server -- token --sub svc --rpc-register svc.resize) \
//!     cargo run -p plexus-client --example resize -- serve
//! PLEXUS_TOKEN=$(cargo run -q -p plexus-server -- token --sub app --rpc-call svc.resize) \
//!     cargo run -p plexus-client --example resize -- call
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use plexus_client::protocol::methods::rpc::Policy;
use plexus_client::protocol::{ErrorCode, WireError};
use plexus_client::{CallOptions, Client, Invocation, RegisterOptions};

#[derive(Parser)]
struct Args {
    /// Hub URL.
    #[arg(long, default_value = "ws://127.0.0.1:7700/v1/ws")]
    url: String,
    /// The hub's HMAC secret, to mint tokens with.
    #[arg(long, env = "PLEXUS_JWT_SECRET")]
    secret: Option<String>,
    /// A token to use instead (needs `rpc_register` or `rpc_call` for
    /// `svc.resize`).
    #[arg(long, env = "PLEXUS_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Offer `svc.resize` with several callees.
    Serve {
        /// How many callees (one connection each).
        #[arg(long, default_value_t = 2)]
        callees: u32,
        /// `least_pending` or `round_robin` (any policy of §25.2).
        #[arg(long, default_value = "least_pending")]
        policy: String,
        /// Invocations at once per callee.
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
        /// Milliseconds per 10 % of progress.
        #[arg(long, default_value_t = 150)]
        step_ms: u64,
    },
    /// Resize images, printing their progress.
    Call {
        /// How many images at once.
        #[arg(long, default_value_t = 4)]
        images: u32,
        /// The target width.
        #[arg(long, default_value_t = 256)]
        width: u32,
    },
}

const PROCEDURE: &str = "svc.resize";

fn token(args: &Args, sub: &str) -> Result<String, Box<dyn std::error::Error>> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    let secret = args
        .secret
        .as_deref()
        .ok_or("pass --secret (or PLEXUS_JWT_SECRET) or --token")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
        "plexus": { "rpc_register": [PROCEDURE], "rpc_call": [PROCEDURE] },
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// One chunk of an answer: progress in percent, or the result.
#[derive(Debug, minicbor::Encode, minicbor::Decode)]
enum Step {
    #[n(0)]
    Progress(#[n(0)] u8),
    #[n(1)]
    Done(#[n(0)] String),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    match &args.mode {
        Mode::Serve {
            callees,
            policy,
            concurrency,
            step_ms,
        } => {
            let mut held = Vec::new();
            for i in 0..*callees {
                let name = format!("callee-{}", char::from(b'a' + (i % 26) as u8));
                let client = Client::builder(&args.url)
                    .token(token(&args, &name)?)
                    .connect()
                    .await?;
                let step = Duration::from_millis(*step_ms);
                let who = name.clone();
                let options = RegisterOptions::new()
                    .policy(Policy::from_text(policy))
                    .max_concurrency(*concurrency);
                let reg = client
                    .register_stream(PROCEDURE, options, move |inv: Invocation| {
                        let who = who.clone();
                        let (image, width): (String, u32) = match inv.decode() {
                            Ok(p) => p,
                            Err(_) => {
                                let e = WireError::new(
                                    ErrorCode::InvalidParams,
                                    "expected [image, width]",
                                );
                                return futures_util::stream::iter(vec![Err(e)]).boxed();
                            }
                        };
                        println!("{who}: resizing {image} to {width} for {}", inv.caller.sub);
                        // Each step waits for the previous chunk's credit:
                        // a slow caller pauses the work here.
                        futures_util::stream::unfold(0u8, move |done| {
                            let (image, who) = (image.clone(), who.clone());
                            async move {
                                match done {
                                    0..=9 => {
                                        tokio::time::sleep(step).await;
                                        Some((Ok(Step::Progress((done + 1) * 10)), done + 1))
                                    }
                                    10 => Some((
                                        Ok(Step::Done(format!("{image}@{width}px by {who}"))),
                                        11,
                                    )),
                                    _ => None,
                                }
                            }
                        })
                        .boxed()
                    })
                    .await?;
                println!("{name}: serving {PROCEDURE} (registration {:?})", reg.id());
                held.push((client, reg));
            }
            tokio::signal::ctrl_c().await?;
        }
        Mode::Call { images, width } => {
            let client = Client::builder(&args.url)
                .token(token(&args, "caller")?)
                .connect()
                .await?;
            let calls = (0..*images).map(|i| {
                let client = client.clone();
                let width = *width;
                async move {
                    let image = format!("img-{i}");
                    let options = CallOptions::new().timeout(Duration::from_secs(60));
                    let mut progress = client
                        .rpc_call_stream(PROCEDURE, &(&image, width), &options)
                        .await?;
                    while let Some(item) = progress.next().await {
                        match item?.decode::<Step>() {
                            Ok(Step::Progress(p)) => println!("{image}: {p:3}%"),
                            Ok(Step::Done(r)) => println!("{image}: done, {r}"),
                            Err(e) => println!("{image}: unexpected chunk: {e}"),
                        }
                    }
                    Ok::<_, plexus_client::Error>(())
                }
            });
            for r in futures_util::future::join_all(calls).await {
                match r {
                    Ok(()) => {}
                    Err(e) if e.code() == Some(&ErrorCode::NoCallee) => {
                        eprintln!("nobody serves {PROCEDURE}: start `resize serve` first")
                    }
                    Err(e) if e.code() == Some(&ErrorCode::CalleeLost) => {
                        eprintln!("a callee left mid-resize: the outcome is unknown")
                    }
                    Err(e) => eprintln!("failed: {}", e.report()),
                }
            }
        }
    }
    Ok(())
}
