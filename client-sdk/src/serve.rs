//! Running the handlers of served methods (requests from the hub, P20).
//!
//! Each admitted request runs in a tokio task of its own, so a slow
//! handler never holds up the connection. Its outputs go back to the
//! connection task through one bounded channel shared by all of them; a
//! handler waits there while the socket is slow. A handler the hub
//! cancelled is aborted, which drops its future.

use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use plexus_protocol::{ErrorCode, RawValue, WireError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::core::{Handler, Output};

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
                let call = std::panic::catch_unwind(AssertUnwindSafe(|| f(params)));
                let out = match call {
                    Ok(fut) => AssertUnwindSafe(fut)
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| Err(panicked())),
                    Err(_) => Err(panicked()),
                };
                let _ = tx.send((serial, Output::Done(out))).await;
            }
            Handler::Stream(f) => {
                let Ok(mut stream) = std::panic::catch_unwind(AssertUnwindSafe(|| f(params)))
                else {
                    let _ = tx.send((serial, Output::Done(Err(panicked())))).await;
                    return;
                };
                // One item is held back: only the stream's end says which
                // chunk is final.
                let mut held: Option<RawValue> = None;
                loop {
                    let next = AssertUnwindSafe(stream.next()).catch_unwind().await;
                    let output = match next {
                        Ok(Some(Ok(data))) => match held.replace(data) {
                            Some(prev) => Output::Chunk {
                                data: prev,
                                fin: false,
                            },
                            None => continue,
                        },
                        Ok(Some(Err(e))) => Output::Done(Err(e)),
                        // An empty stream ends with a final chunk of null.
                        Ok(None) => Output::Chunk {
                            data: held.take().unwrap_or_default(),
                            fin: true,
                        },
                        Err(_) => Output::Done(Err(panicked())),
                    };
                    let terminal =
                        matches!(output, Output::Done(_) | Output::Chunk { fin: true, .. });
                    if tx.send((serial, output)).await.is_err() || terminal {
                        return;
                    }
                }
            }
        }
    })
    .abort_handle()
}
