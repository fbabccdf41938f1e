//! `plexus call METHOD` (a hub method) and `plexus rpc call PROCEDURE` (a
//! procedure another client registered, through `rpc.call`).

use futures_util::StreamExt;
use plexus_client::{CallOptions, ChunkStream, RPC_TIMEOUT_SLACK};
use plexus_protocol::RawValue;
use plexus_server::config::{Config, Dur};

use super::connect::{ConnArgs, Grants, connect};
use super::error::CliError;
use super::output::{Out, params};

/// Methods the SDK runs itself: called by hand, their effect would not be
/// routed anywhere (a subscription whose events nobody reads).
const MANAGED: [(&str, &str); 5] = [
    ("subscribe", "use `plexus sub`"),
    ("unsubscribe", "subscriptions end with `plexus sub`"),
    ("auth", "the connection authenticates itself"),
    ("auth.refresh", "the connection refreshes its token itself"),
    ("cancel", "a notification, not a method"),
];

/// `plexus call METHOD [PARAMS]`.
#[derive(Debug, clap::Args)]
pub(crate) struct CallArgs {
    /// The hub method: `ping`, `presence.get`, `history`,
    /// `history.latest`, `sync.info`, `rpc.list`, … (docs/protocol.md §11).
    method: String,
    /// The params: JSON, or CBOR diagnostic notation for what JSON cannot
    /// say (typed maps have integer keys: '{0: "demo.x"}') [default: null].
    params: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "30s")]
    timeout: Dur,
    #[command(flatten)]
    conn: ConnArgs,
}

/// The text at key 0 of a typed map: the topic, space or procedure most
/// methods act on.
#[derive(minicbor::Decode)]
#[cbor(map)]
struct Scope<'a> {
    #[b(0)]
    name: Option<&'a str>,
}

/// What a token minted for `method` with `params` grants: the capability
/// the hub checks for it, on the topic, space or procedure the params name
/// (docs/protocol.md §9.3); nothing for other methods.
fn grants_for(method: &str, params: &RawValue) -> Grants {
    let scope: Vec<String> = params
        .decode::<Scope<'_>>()
        .ok()
        .and_then(|s| s.name)
        .map(str::to_owned)
        .into_iter()
        .collect();
    let mut g = Grants::default();
    match method {
        "publish" => g.publish = scope,
        "presence.get" | "history" | "history.latest" => g.subscribe = scope,
        "presence.set" => g.presence = true,
        "sync.info" | "sync.pull" => g.sync_read = scope,
        "sync.push" => g.sync_write = scope,
        "rpc.register" => g.rpc_register = scope,
        "rpc.call" => g.rpc_call = scope,
        "rpc.list" => g.rpc_admin = true,
        _ => {}
    }
    g
}

/// Runs `plexus call`.
pub(crate) async fn call(args: CallArgs, config: &Config) -> Result<(), CliError> {
    if let Some((_, why)) = MANAGED.iter().find(|(m, _)| *m == args.method) {
        return Err(CliError::Usage(format!(
            "`plexus call {}` is not supported: {why}",
            args.method
        )));
    }
    let params = parse_params(args.params.as_deref())?;
    let client = connect(&args.conn, config, grants_for(&args.method, &params)).await?;
    let mut out = Out::new(args.conn.format());
    let printed = async {
        // A streamed result is printed chunk by chunk; any other is one
        // item.
        let chunks = client.call_stream(&args.method, &params).await?;
        print_chunks(chunks, &mut out).await
    };
    let result = tokio::time::timeout(args.timeout.0, printed)
        .await
        .unwrap_or(Err(CliError::Connection(format!(
            "no answer within {}",
            humantime::format_duration(args.timeout.0)
        ))));
    client.close().await;
    result
}

/// `plexus rpc call PROCEDURE [PARAMS]`.
#[derive(Debug, clap::Args)]
pub(crate) struct RpcCallArgs {
    /// The procedure.
    procedure: String,
    /// The params: JSON, or CBOR diagnostic notation [default: null].
    params: Option<String>,
    /// The call's deadline, enforced by the hub (the callee is interrupted
    /// past it).
    #[arg(long, default_value = "30s")]
    timeout: Dur,
    /// The affinity key (for procedures registered with `--policy
    /// affinity`).
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Runs `plexus rpc call`.
pub(crate) async fn rpc_call(args: RpcCallArgs, config: &Config) -> Result<(), CliError> {
    let params = parse_params(args.params.as_deref())?;
    let grants = Grants {
        rpc_call: vec![args.procedure.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut out = Out::new(args.conn.format());
    let mut options = CallOptions::new().timeout(args.timeout.0);
    if let Some(k) = &args.key {
        options = options.key(k.clone());
    }
    let printed = async {
        let chunks = client
            .rpc_call_stream(&args.procedure, &params, &options)
            .await?;
        print_chunks(chunks, &mut out).await
    };
    // The hub answers `timeout` at the deadline; wait a little longer for
    // that answer before giving up here.
    let result = tokio::time::timeout(args.timeout.0.saturating_add(RPC_TIMEOUT_SLACK), printed)
        .await
        .unwrap_or(Err(CliError::Connection(
            "the hub did not answer by the deadline".to_owned(),
        )));
    client.close().await;
    result
}

fn parse_params(s: Option<&str>) -> Result<RawValue, CliError> {
    s.map_or_else(|| Ok(RawValue::null()), params)
}

/// Prints each item of a result stream; a plain `null` result, which
/// arrives as an empty stream, is printed as `null`.
async fn print_chunks(mut chunks: ChunkStream, out: &mut Out) -> Result<(), CliError> {
    let mut any = false;
    while let Some(item) = chunks.next().await {
        out.value(&item?)?;
        any = true;
    }
    if !any {
        out.value(&RawValue::null())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_grants_what_the_method_checks_on_what_it_names() {
        let p = params(r#"{0: "demo.x", 3: 2}"#).unwrap_or_default();
        assert_eq!(grants_for("history", &p).subscribe, ["demo.x"]);
        assert_eq!(grants_for("sync.info", &p).sync_read, ["demo.x"]);
        assert!(grants_for("rpc.list", &RawValue::null()).rpc_admin);
        let none = grants_for("ping", &p);
        assert!(none.subscribe.is_empty() && none.publish.is_empty());
        // Params that are not a typed map name nothing.
        assert!(
            grants_for("history", &RawValue::null())
                .subscribe
                .is_empty()
        );
    }
}
