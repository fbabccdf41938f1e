//! One monotonic clock shared by every sender and receiver in the process.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process.
pub fn now_nanos() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Writes the current time into the first 8 bytes of `payload` (which must
/// be at least 8 bytes long; shorter payloads carry no timestamp).
pub fn stamp(payload: &mut [u8]) {
    if let Some(head) = payload.get_mut(..8) {
        head.copy_from_slice(&now_nanos().to_le_bytes());
    }
}

/// Reads the timestamp written by [`stamp`], if the payload has one.
pub fn read_stamp(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}
