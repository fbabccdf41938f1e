//! Decoding limits: the bounds every decoder of untrusted input enforces.

/// Default largest frame, in bytes, that a decoder accepts (1 MiB).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1024 * 1024;

/// Default deepest nesting of CBOR arrays, maps and tags in one frame.
///
/// The frame's own array is level 1 and a method's params map is level 2,
/// which leaves application payloads 30 levels.
pub const DEFAULT_MAX_DEPTH: u16 = 32;

/// Hard ceiling on [`DecodeLimits::max_depth`], whatever is configured.
///
/// The well-formedness check recurses once per level; this keeps its stack
/// use small and bounded.
pub const MAX_DEPTH_CEILING: u16 = 256;

/// Bounds applied when decoding a frame from untrusted bytes.
///
/// ```
/// use plexus_protocol::DecodeLimits;
/// let limits = DecodeLimits { max_frame_size: 64 * 1024, ..DecodeLimits::default() };
/// assert_eq!(limits.max_depth, plexus_protocol::limits::DEFAULT_MAX_DEPTH);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted frame in bytes; larger input fails with
    /// [`DecodeError::TooLarge`](crate::DecodeError::TooLarge) before any parsing.
    pub max_frame_size: usize,
    /// Deepest accepted nesting of arrays, maps and tags (clamped to
    /// [`MAX_DEPTH_CEILING`]).
    pub max_depth: u16,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl DecodeLimits {
    /// The effective depth limit: `max_depth` clamped to [`MAX_DEPTH_CEILING`].
    pub fn effective_depth(&self) -> u16 {
        self.max_depth.min(MAX_DEPTH_CEILING)
    }
}
