//! `plexus sync pull SPACE`: a record-sync space's records, from a
//! snapshot or after a cursor.

use plexus_client::{PullChange, SyncCursor};
use plexus_protocol::RawValue;
use plexus_protocol::methods::sync::SyncRecord;
use plexus_server::config::Config;

use super::connect::{ConnArgs, Grants, connect};
use super::error::CliError;
use super::output::{Field, Format, Out, Record, bytes, diag};

/// `plexus sync pull SPACE`.
#[derive(Debug, clap::Args)]
pub(crate) struct PullArgs {
    /// The space.
    space: String,
    /// Only the changes after this cursor (the `cursor` an earlier pull
    /// printed) [default: a snapshot of the live records].
    #[arg(long)]
    since: Option<u64>,
    /// The epoch the cursor belongs to (printed with it) [default: the
    /// space's current epoch].
    #[arg(long, requires = "since")]
    epoch: Option<String>,
    /// Only this collection's records.
    #[arg(long)]
    collection: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// A record as printed.
fn record(r: &SyncRecord) -> Record {
    // The fields map, name → bytes, as one CBOR map (encoding into a Vec
    // cannot fail).
    let fields = r
        .fields
        .as_ref()
        .map(|f| RawValue::encode(f).unwrap_or_default());
    Record::new()
        .with("collection", Field::Str(r.collection.clone()))
        .with("id", Field::Str(r.id.clone()))
        .with("version", Field::U64(r.version))
        .with("position", Field::U64(r.position))
        .with("deleted", Field::Bool(r.deleted))
        .with_opt("fields", fields.map(Field::Value))
        .with_opt("hlc", r.hlc.map(Field::U64))
        .with_opt("actor", r.actor.clone().map(Field::Str))
        .with_opt("expires_at", r.expires_at.map(Field::U64))
}

/// A record for people: `collection/id v3 @7: value` (the opaque value
/// alone, else `name=value` pairs), UTF-8 values as text, others in
/// diagnostic notation.
fn human(r: &SyncRecord) -> String {
    let head = format!("{}/{} v{} @{}", r.collection, r.id, r.version, r.position);
    if r.deleted {
        return format!("{head} deleted");
    }
    let show = |v: &[u8]| match std::str::from_utf8(v) {
        Ok(s) => s.to_owned(),
        Err(_) => diag(bytes(v).as_bytes()),
    };
    let fields = r.fields.as_ref().map(|f| &f.0);
    let body = match fields {
        Some(f) if f.len() == 1 && f.contains_key("") => {
            f.get("").map(|v| show(v)).unwrap_or_default()
        }
        Some(f) => f
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    };
    format!("{head}: {body}")
}

/// Runs `plexus sync pull`.
pub(crate) async fn pull(args: PullArgs, config: &Config) -> Result<(), CliError> {
    let grants = Grants {
        sync_read: vec![args.space.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut out = Out::new(args.conn.format());
    let format = out.format();
    let space = client.space(args.space.clone());
    let mut cursor = SyncCursor::new(args.epoch.clone(), args.since.unwrap_or(0));
    // The callback cannot return a CliError: the first failure to print is
    // kept here and returned after the pull stops.
    let mut failed: Option<CliError> = None;
    let pulled = space
        .pull(&mut cursor, args.collection.as_deref(), |change| {
            let printed = match change {
                PullChange::Reset => {
                    if format == Format::Human {
                        eprintln!(
                            "the space was reset (or the cursor is no longer valid): a snapshot follows"
                        );
                        Ok(())
                    } else {
                        out.record(&Record::new().with("reset", Field::Bool(true)), String::new)
                    }
                }
                PullChange::Records(records) => records
                    .iter()
                    .try_for_each(|r| out.record(&record(r), || human(r))),
                // A later kind of change: nothing to print.
                _ => Ok(()),
            };
            printed.map_err(|e| {
                let text = e.to_string();
                failed = Some(e);
                text.into()
            })
        })
        .await;
    let summary = match (pulled, failed) {
        (_, Some(e)) => return Err(e),
        (Err(e), None) => return Err(e.into()),
        (Ok(s), None) => s,
    };
    let epoch = summary.cursor.epoch.clone().unwrap_or_default();
    let line = Record::new()
        .with("cursor", Field::U64(summary.cursor.position))
        .with("epoch", Field::Str(epoch.clone()))
        .with("count", Field::U64(summary.count))
        .with("reset", Field::Bool(summary.reset));
    out.record(&line, || {
        format!(
            "{} record(s); cursor {} (next: --since {} --epoch {epoch})",
            summary.count, summary.cursor.position, summary.cursor.position
        )
    })?;
    client.close().await;
    Ok(())
}
