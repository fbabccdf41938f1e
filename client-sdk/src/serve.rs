//! Running the handlers of served methods (requests from the hub, P20).
//!
//! Each admitted request runs in a tokio task of its own, so a slow
//! handler never holds up the connection. Its outputs go back to the
//! connection task through one bounded channel shared by all of them; a
//! handler waits there while the socket is slow. A handler the hub
//! cancelled is aborted, which drops its future. A routed procedure's
//! streaming handler is read only as its invocation's credit allows.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use plexus_protocol::{ErrorCode, RawValue, WireError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::core::{Handler, Output, RpcHandler};
use crate::deliver::Credit;
use crate::rpc::Invocation;

/// The channel the handlers' outputs travel on: (serial, output).
pub(crate) type OutputTx = mpsc::Sender<(u64, Output)>;

fn panicked() -> WireError {
    WireError::new(ErrorCode::Internal, "the handler panicked")
}

/// Runs request `serial` with `handler`; its outputs go to `tx`.
pub(crate) fn spawn(serial: u64, handler: Handler, params: RawValue, tx: OutputTx) -> AbortHandle {
    tokio::spawn(async move {
        match handler {
            Handler::Unary(f) => {
                let fut = std::panic::catch_unwind(AssertUnwindSafe(|| f(params)));
                run_unary(serial, fut.ok(), tx).await;
            }
            Handler::Stream(f) => {
                let stream = std::panic::catch_unwind(AssertUnwindSafe(|| f(params)));
                run_stream(serial, stream.ok(), None, tx).await;
            }
        }
    })
    .abort_handle()
}

/// Runs the invocation `serial` of a routed procedure with `handler`;
/// a streaming handler's non-final chunks each take one chunk of
/// `credit` first (§25.7).
pub(crate) fn spawn_invocation(
    serial: u64,
    handler: RpcHandler,
    invocation: Invocation,
    credit: Arc<Credit>,
    tx: OutputTx,
) -> AbortHandle {
    tokio::spawn(async move {
        match handler {
            RpcHandler::Unary(f) => {
                let fut = std::panic::catch_unwind(AssertUnwindSafe(|| f(invocation)));
                run_unary(serial, fut.ok(), tx).await;
            }
            RpcHandler::Stream(f) => {
                let stream = std::panic::catch_unwind(AssertUnwindSafe(|| f(invocation)));
                run_stream(serial, stream.ok(), Some(credit), tx).await;
            }
        }
    })
    .abort_handle()
}

/// Awaits a unary handler's future (`None`: making it panicked).
async fn run_unary(
    serial: u64,
    fut: Option<BoxFuture<'static, Result<RawValue, WireError>>>,
    tx: OutputTx,
) {
    let out = match fut {
        Some(fut) => AssertUnwindSafe(fut)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(panicked())),
        None => Err(panicked()),
    };
    let _ = tx.send((serial, Output::Done(out))).await;
}

/// Reads a streaming handler's stream (`None`: making it panicked) and
/// sends its items as chunks, each non-final one after taking a chunk of
/// `credit` when there is a credit.
async fn run_stream(
    serial: u64,
    stream: Option<BoxStream<'static, Result<RawValue, WireError>>>,
    credit: Option<Arc<Credit>>,
    tx: OutputTx,
) {
    let Some(mut stream) = stream else {
        let _ = tx.send((serial, Output::Done(Err(panicked())))).await;
        return;
    };
    // One item is held back: only the stream's end says which chunk is
    // final.
    let mut held: Option<RawValue> = None;
    loop {
        let next = AssertUnwindSafe(stream.next()).catch_unwind().await;
        let output = match next {
            Ok(Some(Ok(data))) => match held.replace(data) {
                Some(prev) => {
                    if let Some(c) = &credit {
                        // Never a non-final chunk without credit.
                        std::future::poll_fn(|cx| c.poll_take(cx)).await;
                    }
                    Output::Chunk {
                        data: prev,
                        fin: false,
                    }
                }
                None => continue,
            },
            Ok(Some(Err(e))) => {
                // The item held back goes first: chunks before the error
                // stand.
                if let Some(prev) = held.take() {
                    if let Some(c) = &credit {
                        std::future::poll_fn(|cx| c.poll_take(cx)).await;
                    }
                    let chunk = Output::Chunk {
                        data: prev,
                        fin: false,
                    };
                    if tx.send((serial, chunk)).await.is_err() {
                        return;
                    }
                }
                Output::Done(Err(e))
            }
            // An empty stream ends with a final chunk of null.
            Ok(None) => Output::Chunk {
                data: held.take().unwrap_or_default(),
                fin: true,
            },
            Err(_) => Output::Done(Err(panicked())),
        };
        let terminal = matches!(output, Output::Done(_) | Output::Chunk { fin: true, .. });
        if tx.send((serial, output)).await.is_err() || terminal {
            return;
        }
    }
}
