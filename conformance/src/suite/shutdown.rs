//! §19: graceful shutdown. Needs `--shutdown-cmd`, a command that makes the
//! server shut down; the case runs alone, after every other.

use std::time::Duration;

use super::util::*;
use crate::cbor::Value;
use crate::conn::End;
use crate::frame;
use crate::runner::Case;
use crate::{ensure, fail, skip};

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![Case::new(
        "shutdown.graceful-4008",
        "19, 12.6, 15.1, 6.3, P11",
        "on shutdown every connection gets closing 4008 with retry_after_ms and close 4008, in-flight requests get no response, a client still sending loses nothing, and new connections are refused",
        |ctx| async move {
            let Some(cmd) = ctx.settings().shutdown_cmd.clone() else {
                skip!("needs --shutdown-cmd CMD (a command that makes the server shut down gracefully)");
            };
            let mut quiet = ctx.client("quiet").await?;
            let mut busy = ctx.client("busy").await?;
            let debug = {
                busy.send(&frame::request(42, "debug.sleep", &sleep(30_000))).await?;
                busy.alive().await?;
                super::requests::skip_if_no_debug(&mut busy, "debug.sleep").is_ok()
            };
            let mut talker = ctx.client("talker").await?;
            let spam = spam_cancels(&talker);
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .await
                .map_err(|e| crate::check::CaseError::Fail(format!("--shutdown-cmd: {e}")))?;
            ensure!(status.success(), "--shutdown-cmd exited with {status}");
            let wait = Duration::from_secs(12);
            for (name, c) in [("idle", &mut quiet), ("busy", &mut busy)] {
                let rep = c.expect_close(4008, wait).await.map_err(|e| e.context(format!("the {name} connection")))?;
                let retry = rep.closing.as_ref().and_then(|p| p.opt(2)).and_then(Value::as_u64);
                ensure!(retry.is_some(), "closing 4008 without retry_after_ms (§19)");
                if debug && name == "busy" {
                    ensure!(
                        !rep.before.iter().any(|f| f.reply_id() == Some(42)),
                        "the request in flight was answered during the shutdown (§19: no response)"
                    );
                }
            }
            let r = talker.expect_close(4008, wait).await;
            spam.stop().await;
            let rep = r.map_err(|e| e.context("the connection that kept sending"))?;
            ensure!(rep.end != End::Reset, "the connection that kept sending was reset after its Close frame (P11)");
            // New handshakes are refused: TCP refused, or HTTP 503.
            match ctx.handshake(&crate::ws::Handshake { protocols: Some("plexus.v1".into()), ..Default::default() }).await {
                Err(_) => Ok(()),
                Ok((reply, None)) => {
                    ensure!(reply.status == 503, "a handshake during shutdown got {} (§19: refused or 503)", reply.status);
                    Ok(())
                }
                Ok((_, Some(_))) => fail!("a new connection was accepted during the shutdown (§19)"),
            }
        },
    )
    .exclusive()]
}
