//! Test-only methods (decision H5): compiled only in debug builds or with
//! the `debug-methods` cargo feature, and served only with
//! `--debug-methods`. The SDK and conformance suites use them to exercise
//! asynchronous, panicking, streamed and server-initiated requests.
//!
//! | method | params | answer |
//! |---|---|---|
//! | `debug.sleep` | `{0: ms}` | `{}` after `ms` milliseconds |
//! | `debug.panic` | any | `internal` (the handler panics) |
//! | `debug.stream` | `{0: count, 1: size}` | `count` chunks of `size`-byte byte strings, with credit, then a final chunk with data `null` |
//! | `debug.call` | `{0: method, 1: params, ? 2: timeout_ms}` | the client's answer to a request `method` with `params` that the hub sends to the calling connection itself (P20); its error object as the error |

use std::time::Duration;

use futures_util::future::BoxFuture;
use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};
use plexus_protocol::methods::Empty;
use plexus_protocol::{RawRef, RawValue, RpcMethod};

use crate::session::context::Ctx;
use crate::session::error::RequestError;
use crate::session::registry::{Meta, Registry};
use crate::session::stream::ChunkSink;

/// Longest `debug.sleep` and `debug.call` timeout accepted (an hour).
pub const MAX_DEBUG_WAIT_MS: u64 = 3_600_000;

/// Most chunks one `debug.stream` sends.
pub const MAX_DEBUG_CHUNKS: u64 = 1_000_000;

/// `debug.call`'s timeout when none is given.
pub const DEFAULT_DEBUG_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// `debug.sleep` params: `{0: ms}`.
#[derive(Debug, Clone, Copy, Encode, Decode)]
#[cbor(map)]
pub struct SleepParams {
    /// How long to sleep.
    #[n(0)]
    pub ms: u64,
}

/// `debug.sleep`.
#[derive(Debug)]
pub enum DebugSleep {}
impl RpcMethod for DebugSleep {
    const NAME: &'static str = "debug.sleep";
    type Params<'a> = SleepParams;
    type Result = Empty;
}

/// `debug.panic` (any params).
#[derive(Debug)]
pub enum DebugPanic {}
impl RpcMethod for DebugPanic {
    const NAME: &'static str = "debug.panic";
    type Params<'a> = RawRef<'a>;
    type Result = Empty;
}

/// `debug.stream` params: `{0: count, 1: size}`.
#[derive(Debug, Clone, Copy, Encode, Decode)]
#[cbor(map)]
pub struct StreamParams {
    /// How many chunks before the final one.
    #[n(0)]
    pub count: u64,
    /// Bytes in each chunk's byte string.
    #[n(1)]
    pub size: u64,
}

/// `debug.stream`.
#[derive(Debug)]
pub enum DebugStream {}
impl RpcMethod for DebugStream {
    const NAME: &'static str = "debug.stream";
    type Params<'a> = StreamParams;
    type Result = RawValue;
}

/// `debug.call` params: `{0: method, 1: params, ? 2: timeout_ms}`.
#[derive(Debug, Clone, Encode, Decode)]
#[cbor(map)]
pub struct CallParams<'a> {
    /// The method to call on the client.
    #[b(0)]
    pub method: &'a str,
    /// Its params.
    #[b(1)]
    pub params: RawRef<'a>,
    /// How long to wait for the client's answer (default 10 s).
    #[n(2)]
    pub timeout_ms: Option<u64>,
}

/// `debug.call`.
#[derive(Debug)]
pub enum DebugCall {}
impl RpcMethod for DebugCall {
    const NAME: &'static str = "debug.call";
    type Params<'a> = CallParams<'a>;
    type Result = RawValue;
}

/// Registers the four methods.
pub fn register(r: &mut Registry) {
    r.asynchronous::<DebugSleep, _>(Meta::default(), sleep);
    r.sync::<DebugPanic, _>(Meta::default(), panic);
    r.streamed::<DebugStream, _>(Meta::default(), stream);
    r.asynchronous::<DebugCall, _>(Meta::default(), call);
}

fn sleep(
    _: &mut Ctx<'_>,
    p: SleepParams,
) -> Result<BoxFuture<'static, Result<Empty, RequestError>>, RequestError> {
    if p.ms > MAX_DEBUG_WAIT_MS {
        return Err(RequestError::invalid_params("ms is at most an hour"));
    }
    Ok(Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        Ok(Empty {})
    }))
}

/// Shows that a bug answers `internal` and leaves the connection and the
/// hub running.
fn panic(_: &mut Ctx<'_>, _: RawRef<'_>) -> Result<Empty, RequestError> {
    #[allow(clippy::panic)] // the point of the method
    {
        panic!("debug.panic called")
    }
}

fn stream(
    ctx: &mut Ctx<'_>,
    p: StreamParams,
    mut sink: ChunkSink,
) -> Result<BoxFuture<'static, Result<RawValue, RequestError>>, RequestError> {
    if p.count > MAX_DEBUG_CHUNKS {
        return Err(RequestError::invalid_params("count is at most 1,000,000"));
    }
    // The chunk must fit in a frame with its envelope.
    let max = ctx.config().max_frame_size.saturating_sub(64);
    let size = usize::try_from(p.size)
        .ok()
        .filter(|s| *s <= max)
        .ok_or_else(|| RequestError::invalid_params("size exceeds max_frame_size"))?;
    Ok(Box::pin(async move {
        let data = ByteVec::from(vec![0x5a; size]);
        for _ in 0..p.count {
            sink.send(&data).await?;
        }
        Ok(RawValue::null())
    }))
}

fn call(
    ctx: &mut Ctx<'_>,
    p: CallParams<'_>,
) -> Result<BoxFuture<'static, Result<RawValue, RequestError>>, RequestError> {
    let timeout = match p.timeout_ms {
        Some(ms) if ms > MAX_DEBUG_WAIT_MS => {
            return Err(RequestError::invalid_params(
                "timeout_ms is at most an hour",
            ));
        }
        Some(ms) => Duration::from_millis(ms),
        None => DEFAULT_DEBUG_CALL_TIMEOUT,
    };
    if p.method.is_empty() {
        return Err(RequestError::invalid_params("empty method name"));
    }
    let method = p.method.to_owned();
    let params =
        RawValue::encode(&p.params).map_err(|_| RequestError::invalid_params("invalid params"))?;
    let client = ctx.client();
    Ok(Box::pin(async move {
        client.call(&method, params, timeout).await
    }))
}
