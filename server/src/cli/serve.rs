//! `plexus rpc serve PROCEDURE -- CMD ARGS…`: a routed procedure answered
//! by running a command, in the manner of `nats reply --command`.
//!
//! Each call runs CMD with the params' JSON projection (and a newline) on
//! its standard input; its standard output is the answer, as JSON if it
//! parses, else as a text string (a byte string if it is not UTF-8, `null`
//! if it is empty). Its standard error is this process's. A non-zero exit
//! answers `internal`; a call that runs past `--timeout` kills the command
//! and answers `timeout`; a call the caller cancels (or the hub withdraws
//! at its deadline) kills the command too.

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_client::{Invocation, RegisterOptions};
use plexus_protocol::methods::rpc::Policy;
use plexus_protocol::{ErrorCode, RawValue, WireError, json};
use plexus_server::config::{Config, Dur};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::connect::{ConnArgs, Grants, connect};
use super::error::CliError;
#[cfg(test)]
use super::output::text;
use super::output::{bytes, json_or_text};

/// Most calls running at once unless `--concurrency` says otherwise.
pub(crate) const DEFAULT_CONCURRENCY: u32 = 4;

/// Most bytes of a command's standard output (the hub's default frame
/// size): more is answered `payload_too_large`.
pub(crate) const MAX_ANSWER_BYTES: usize = plexus_protocol::limits::DEFAULT_MAX_FRAME_SIZE;

/// `plexus rpc serve PROCEDURE -- CMD ARGS…`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The procedure to register.
    procedure: String,
    /// The command run for each call, after `--`.
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    command: Vec<String>,
    /// Most calls running at once (the hub queues the rest).
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(plexus_client::MAX_RPC_CONCURRENCY)))]
    concurrency: u32,
    /// Most time one call may take: the command is killed past it.
    #[arg(long, default_value = "30s")]
    timeout: Dur,
    /// How calls are shared with other callees of the procedure: `single`,
    /// `round_robin`, `random`, `first`, `last`, `least_pending`,
    /// `affinity` [default: the hub's, `single`].
    #[arg(long)]
    policy: Option<String>,
    /// Print nothing per call.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

/// What every call of the registration runs.
#[derive(Debug)]
struct Runner {
    program: String,
    args: Vec<String>,
    timeout: Duration,
    quiet: bool,
}

/// Runs `plexus rpc serve` until Ctrl-C or SIGTERM.
pub(crate) async fn serve(args: ServeArgs, config: &Config) -> Result<(), CliError> {
    let grants = Grants {
        rpc_register: vec![args.procedure.clone()],
        ..Grants::default()
    };
    let client = connect(&args.conn, config, grants).await?;
    let mut command = args.command.into_iter();
    let program = command
        .next()
        .ok_or_else(|| CliError::Usage("no command after `--`".to_owned()))?;
    let runner = Arc::new(Runner {
        program,
        args: command.collect(),
        timeout: args.timeout.0,
        quiet: args.quiet,
    });
    let mut options = RegisterOptions::new().max_concurrency(args.concurrency);
    if let Some(p) = &args.policy {
        options = options.policy(Policy::from_text(p));
    }
    let handler = {
        let runner = runner.clone();
        move |inv: Invocation| {
            let runner = runner.clone();
            async move { runner.answer(inv).await }
        }
    };
    let registration = client
        .register_with(args.procedure.clone(), options, handler)
        .await?;
    eprintln!(
        "serving {} with `{}` (concurrency {}); Ctrl-C stops",
        args.procedure, runner.program, args.concurrency
    );
    crate::wait_for_signal().await;
    drop(registration);
    client.close().await;
    Ok(())
}

impl Runner {
    /// Answers one call, logging it to stderr.
    async fn answer(&self, inv: Invocation) -> Result<RawValue, WireError> {
        let started = Instant::now();
        let answer = self.run(&inv).await;
        if !self.quiet {
            let took = started.elapsed().as_millis();
            match &answer {
                Ok(_) => eprintln!(
                    "{}: call {} from {} answered in {took} ms",
                    inv.procedure, inv.call, inv.caller.sub
                ),
                Err(e) => eprintln!(
                    "{}: call {} from {} failed in {took} ms: {e}",
                    inv.procedure, inv.call, inv.caller.sub
                ),
            }
        }
        answer
    }

    /// Runs the command for `inv`. Dropping the future (the call was
    /// cancelled) kills the command.
    async fn run(&self, inv: &Invocation) -> Result<RawValue, WireError> {
        let mut input = json::raw_to_json(&inv.params).to_string().into_bytes();
        input.push(b'\n');
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env("PLEXUS_PROCEDURE", &inv.procedure)
            .env("PLEXUS_CALLER", &inv.caller.sub)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                WireError::new(
                    ErrorCode::Internal,
                    format!("cannot run {}: {e}", self.program),
                )
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let limit = self.timeout.min(inv.remaining());
        let work = async {
            let write = async {
                if let Some(mut s) = stdin {
                    // A command that does not read its input closes the
                    // pipe early: not an error.
                    let _ = s.write_all(&input).await;
                }
            };
            let read = async {
                let mut buf = Vec::new();
                if let Some(s) = stdout {
                    let bound = u64::try_from(MAX_ANSWER_BYTES).unwrap_or(u64::MAX) + 1;
                    s.take(bound).read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let ((), out) = tokio::join!(write, read);
            let out = out?;
            if out.len() > MAX_ANSWER_BYTES {
                return Ok(Err(WireError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the answer is over {MAX_ANSWER_BYTES} bytes"),
                )));
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(Ok((status, out)))
        };
        let outcome = tokio::time::timeout(limit, work).await;
        match outcome {
            Err(_) => {
                // Killed and reaped before the answer goes out.
                let _ = child.kill().await;
                Err(WireError::new(
                    ErrorCode::Timeout,
                    format!(
                        "{} ran longer than {}",
                        self.program,
                        humantime::format_duration(limit)
                    ),
                ))
            }
            Ok(Err(e)) => Err(WireError::new(
                ErrorCode::Internal,
                format!("{}: {e}", self.program),
            )),
            Ok(Ok(Err(too_large))) => {
                let _ = child.kill().await;
                Err(too_large)
            }
            Ok(Ok(Ok((status, out)))) => self.answer_of(status, &out),
        }
    }

    /// The answer of a command that exited with `status` and printed `out`.
    fn answer_of(&self, status: ExitStatus, out: &[u8]) -> Result<RawValue, WireError> {
        if !status.success() {
            return Err(WireError::new(
                ErrorCode::Internal,
                format!("{} failed ({status})", self.program),
            ));
        }
        Ok(stdout_answer(out))
    }
}

/// A command's standard output as an answer: JSON if it parses, else the
/// text (without its last newline), bytes if it is not UTF-8, `null` if
/// it is empty.
fn stdout_answer(out: &[u8]) -> RawValue {
    let out = out.strip_suffix(b"\n").unwrap_or(out);
    let out = out.strip_suffix(b"\r").unwrap_or(out);
    if out.is_empty() {
        return RawValue::null();
    }
    match std::str::from_utf8(out) {
        Ok(s) => json_or_text(s),
        Err(_) => bytes(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_output_is_json_or_text_or_bytes_or_null() {
        assert_eq!(stdout_answer(b"{\"a\":1}\n"), json_or_text("{\"a\":1}"));
        assert_eq!(stdout_answer(b"hello\n"), text("hello"));
        assert_eq!(stdout_answer(b"two\nlines\n"), text("two\nlines"));
        assert!(stdout_answer(b"\n").is_null());
        assert_eq!(stdout_answer(&[0xff, 0x00]).as_bytes(), &[0x42, 0xff, 0x00]);
    }
}
