//! The client commands of the `plexus` binary — `pub`, `sub`, `call`,
//! `history`, `sync pull`, `rpc call`, `rpc serve` — a command line over
//! the SDK (`plexus-client`) in the manner of the `nats` CLI.
//! `docs/cli.md` describes each command, the output formats, how a token
//! is minted when none is given, and the exit codes.
//!
//! How it fits: `connect` holds the flags every command has and makes the
//! connection (minting a token with just the capabilities the command
//! needs); `output` prints in the chosen format and reads values from the
//! command line, through the protocol crate's JSON projection; `error`
//! is the one mapping of failures to messages and exit codes. The
//! commands: `pubsub` (`pub`, `sub`, `history`), `call` (`call`,
//! `rpc call`), `serve` (`rpc serve`), `sync` (`sync pull`). This module
//! tree belongs to the binary only; the library knows nothing of it.

mod call;
mod connect;
mod error;
mod output;
mod pubsub;
mod serve;
mod sync;

use std::process::ExitCode;

use clap::Subcommand;
use plexus_server::config::Config;

pub(crate) use error::CliError;

/// The client commands, flattened into the binary's command list.
#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Publish a message (or each line of standard input) on a topic.
    #[command(name = "pub")]
    Pub(pubsub::PubArgs),
    /// Subscribe to a topic or pattern and print its events.
    Sub(pubsub::SubArgs),
    /// Call a hub method and print its result (each chunk of a streamed
    /// one).
    Call(call::CallArgs),
    /// Print the stored events of a durable topic.
    History(pubsub::HistoryArgs),
    /// Record sync.
    #[command(subcommand, name = "sync")]
    SyncCmd(SyncCommand),
    /// Routed RPC: call a procedure, or serve one with a command.
    #[command(subcommand)]
    Rpc(RpcCommand),
}

/// `plexus sync …`.
#[derive(Debug, Subcommand)]
pub(crate) enum SyncCommand {
    /// Print a space's records: a snapshot, or the changes after a cursor.
    Pull(sync::PullArgs),
}

/// `plexus rpc …`.
#[derive(Debug, Subcommand)]
pub(crate) enum RpcCommand {
    /// Call a procedure that another client registered, and print its
    /// result (each chunk of a progressive one).
    Call(call::RpcCallArgs),
    /// Register a procedure and answer each call by running a command.
    Serve(serve::ServeArgs),
}

/// Runs a client command; errors are printed to stderr and become the
/// exit status (`docs/cli.md`, "Exit status").
pub(crate) fn run(command: ClientCommand, config: &Config) -> ExitCode {
    // One thread: a client command waits on one connection (and, for
    // `rpc serve`, on child processes).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(command, config));
    // A read of standard input may still be blocked in the runtime's
    // blocking pool: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            e.print();
            e.exit_code()
        }
    }
}

async fn dispatch(command: ClientCommand, config: &Config) -> Result<(), CliError> {
    match command {
        ClientCommand::Pub(a) => pubsub::publish(a, config).await,
        ClientCommand::Sub(a) => pubsub::subscribe(a, config).await,
        ClientCommand::Call(a) => call::call(a, config).await,
        ClientCommand::History(a) => pubsub::history(a, config).await,
        ClientCommand::SyncCmd(SyncCommand::Pull(a)) => sync::pull(a, config).await,
        ClientCommand::Rpc(RpcCommand::Call(a)) => call::rpc_call(a, config).await,
        ClientCommand::Rpc(RpcCommand::Serve(a)) => serve::serve(a, config).await,
    }
}
