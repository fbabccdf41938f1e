//! `plexus pub`, `plexus sub` and `plexus history`.

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::{DurableEvent, Event, PublishOptions, StartAt, StreamPosition};
use plexus_protocol::RawValue;
use plexus_protocol::methods::{Direction, EventParams, History, HistoryParams};
use plexus_server::config::Config;
use tokio::io::AsyncBufReadExt;

use super::connect::{ConnArgs, Grants, connect};
use super::error::CliError;
use super::output::{Field, Out, Record, human_value, json_or_text};

/// Events `plexus history` asks for per page (the reference hub's cap).
const HISTORY_PAGE: u64 = 1000;

/// `plexus pub TOPIC [DATA]`.
#[derive(Debug, clap::Args)]
pub(crate) struct PubArgs {
    /// The topic.
    topic: String,
    /// The message: JSON if it parses as JSON, else the text itself.
    /// Without it, each line of standard input is one message.
    data: Option<String>,
    /// Publish DATA this many times.
    #[arg(long, default_value_t = 1, requires = "data")]
    count: u64,
    /// Publish at most this many messages a second.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<Duration>,
    /// Publish durably (the topic must be in a durable namespace) and
    /// print each message's offset.
    #[arg(long)]
    durable: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// A rate in messages a second, as the interval between two messages.
fn parse_rate(s: &str) -> Result<Duration, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err("the rate must be a positive number of messages a second".into());
    }
    Duration::try_from_secs_f64(1.0 / rate).map_err(|e| format!("{e}"))
}

/// Runs `plexus pub`.
pub(crate) async fn publish(args: PubArgs, config: &Config) -> Result<(), CliError> {
    let grants = Grants {
        publish: vec![args.topic.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut out = Out::new(args.conn.format());
    let mut pace = args.rate.map(|every| {
        let mut i = tokio::time::interval(every);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut send = async |data: RawValue| -> Result<(), CliError> {
        if let Some(p) = pace.as_mut() {
            p.tick().await;
        }
        publish_one(&client, &args, &data, &mut out).await
    };
    match &args.data {
        Some(d) => {
            let data = json_or_text(d);
            for _ in 0..args.count {
                send(data.clone()).await?;
            }
        }
        None => {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines
                .next_line()
                .await
                .map_err(|e| CliError::Other(format!("cannot read standard input: {e}")))?
            {
                send(json_or_text(&line)).await?;
            }
        }
    }
    client.close().await;
    Ok(())
}

async fn publish_one(
    client: &plexus_client::Client,
    args: &PubArgs,
    data: &RawValue,
    out: &mut Out,
) -> Result<(), CliError> {
    let topic = &args.topic;
    if args.durable {
        let ack = client
            .publish_durable_with(topic, data, PublishOptions::new())
            .await?;
        if args.quiet {
            return Ok(());
        }
        let record = Record::new()
            .with("topic", Field::Str(topic.clone()))
            .with_opt("offset", ack.offset.map(Field::U64))
            .with_opt("position", ack.position.map(Field::U64))
            .with_opt("epoch", ack.epoch.as_deref().map(|e| Field::Str(e.into())))
            .with("duplicate", Field::Bool(ack.duplicate))
            .with("delivered", Field::U64(ack.delivered));
        out.record(&record, || {
            let offset = ack
                .offset
                .map_or_else(|| "offset unknown".to_owned(), |o| format!("offset {o}"));
            let dup = if ack.duplicate { " (duplicate)" } else { "" };
            format!("published to {topic}: {offset}{dup}")
        })
    } else {
        let delivered = client.publish_raw(topic, data, true).await?;
        if args.quiet {
            return Ok(());
        }
        let record = Record::new()
            .with("topic", Field::Str(topic.clone()))
            .with("delivered", Field::U64(delivered));
        out.record(&record, || {
            format!("published to {topic} (delivered to {delivered})")
        })
    }
}

/// `plexus sub PATTERN`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubArgs {
    /// The topic or pattern (`*` matches one token, `>` the rest).
    pattern: String,
    /// Subscribe durably, from this offset on (for a pattern: this
    /// namespace position); 0 or 1 is the first event the history holds.
    #[arg(long)]
    since: Option<u64>,
    /// Subscribe durably from now on, printing offsets.
    #[arg(long, conflicts_with = "since")]
    durable: bool,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Print only the events (no `subscribed` line, no notes).
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// An event as printed by `sub` and `history`.
struct Shown<'a> {
    topic: &'a str,
    data: &'a RawValue,
    from: Option<&'a str>,
    offset: Option<u64>,
    position: Option<u64>,
}

impl Shown<'_> {
    fn print(&self, out: &mut Out, n: Option<u64>) -> Result<(), CliError> {
        let record = Record::new()
            .with("topic", Field::Str(self.topic.to_owned()))
            .with_opt("offset", self.offset.map(Field::U64))
            .with_opt("position", self.position.map(Field::U64))
            .with_opt("from", self.from.map(|f| Field::Str(f.to_owned())))
            .with("data", Field::Value(self.data.clone()));
        out.record(&record, || {
            let mut line = String::new();
            if let Some(n) = n {
                line.push_str(&format!("[#{n}] "));
            }
            line.push_str(self.topic);
            if let Some(o) = self.offset {
                line.push_str(&format!(" offset {o}"));
            }
            if let Some(f) = self.from {
                line.push_str(&format!(" from {f}"));
            }
            line.push_str(": ");
            line.push_str(&human_value(self.data, false));
            line
        })
    }
}

/// Runs `plexus sub`.
pub(crate) async fn subscribe(args: SubArgs, config: &Config) -> Result<(), CliError> {
    let grants = Grants {
        subscribe: vec![args.pattern.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut out = Out::new(args.conn.format());
    let limit = args.count.unwrap_or(u64::MAX);
    let note = |text: String| {
        if !args.quiet {
            eprintln!("{text}");
        }
    };
    let mut seen = 0u64;
    let signal = crate::wait_for_signal();
    tokio::pin!(signal);
    if args.durable || args.since.is_some() {
        let start = match args.since {
            Some(since) => StartAt::After(StreamPosition::new(None, since.saturating_sub(1))),
            None => StartAt::Now,
        };
        let mut sub = client.subscribe_durable_from(&args.pattern, start).await?;
        note(format!("subscribed to {} (durable)", args.pattern));
        while seen < limit {
            let event = tokio::select! {
                e = sub.next() => e,
                () = &mut signal => break,
            };
            match event {
                Some(DurableEvent::Message(m)) => {
                    seen += 1;
                    let shown = Shown {
                        topic: &m.topic,
                        data: &m.data,
                        from: m.from.as_deref(),
                        offset: Some(m.offset),
                        position: Some(m.position),
                    };
                    shown.print(&mut out, Some(seen))?;
                }
                Some(DurableEvent::Recovered { count, position }) => note(format!(
                    "caught up ({count} stored events); live from position {}",
                    position.last
                )),
                Some(DurableEvent::TooOld { earliest, position }) => note(format!(
                    "the history no longer holds those events (earliest: {}); live from position {}",
                    earliest.map_or_else(|| "none".to_owned(), |e| e.to_string()),
                    position.last
                )),
                Some(DurableEvent::Reset { epoch, position }) => note(format!(
                    "the history was reset (epoch {epoch}); live from position {}",
                    position.last
                )),
                Some(DurableEvent::Ended(e)) => return Err(e.into()),
                Some(_) => {}
                None => break,
            }
        }
    } else {
        let mut sub = client.subscribe(&args.pattern).await?;
        note(format!("subscribed to {}", args.pattern));
        while seen < limit {
            let event = tokio::select! {
                e = sub.next() => e,
                () = &mut signal => break,
            };
            match event {
                Some(Event::Message(m)) => {
                    seen += 1;
                    let shown = Shown {
                        topic: &m.topic,
                        data: &m.data,
                        from: m.from.as_deref(),
                        offset: None,
                        position: None,
                    };
                    shown.print(&mut out, Some(seen))?;
                }
                Some(Event::Lagged(n)) => {
                    eprintln!("plexus: {n} events dropped: this subscriber fell behind");
                }
                Some(Event::Ended(e)) => return Err(e.into()),
                Some(Event::Join(_) | Event::Leave(_)) => {}
                None => break,
            }
        }
    }
    client.close().await;
    Ok(())
}

/// `plexus history TOPIC`.
#[derive(Debug, clap::Args)]
pub(crate) struct HistoryArgs {
    /// The durable topic.
    topic: String,
    /// The first offset to print [default: the first (with --backward: the
    /// last) the history holds].
    #[arg(long)]
    since: Option<u64>,
    /// Print at most this many events [default: all].
    #[arg(long)]
    limit: Option<u64>,
    /// Newest first.
    #[arg(long)]
    backward: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `plexus history`.
pub(crate) async fn history(args: HistoryArgs, config: &Config) -> Result<(), CliError> {
    let grants = Grants {
        subscribe: vec![args.topic.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut out = Out::new(args.conn.format());
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut from = args.since;
    let mut epoch: Option<String> = None;
    while left > 0 {
        let mut params = HistoryParams::new(&args.topic).with_limit(left.min(HISTORY_PAGE));
        if let Some(f) = from {
            params = params.with_from(f);
        }
        if args.backward {
            params = params.with_direction(Direction::Backward);
        }
        let page = client.request::<History>(&params).await?;
        if *epoch.get_or_insert_with(|| page.epoch.clone()) != page.epoch {
            return Err(CliError::Other(format!(
                "the history of {} was reset while it was read (epoch {})",
                args.topic, page.epoch
            )));
        }
        for raw in page
            .events
            .iter()
            .take(usize::try_from(left).unwrap_or(usize::MAX))
        {
            let e: EventParams<'_> = raw
                .decode()
                .map_err(|e| CliError::Other(format!("cannot decode a history event: {e}")))?;
            let data = raw.slice_ref(e.data);
            Shown {
                topic: e.topic,
                data: &data,
                from: e.from,
                offset: e.offset,
                position: e.position,
            }
            .print(&mut out, None)?;
            left -= 1;
        }
        match page.next {
            Some(next) if !page.events.is_empty() => from = Some(next),
            _ => break,
        }
    }
    client.close().await;
    Ok(())
}
