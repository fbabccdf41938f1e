//! Raw CBOR values: params, results and payloads carried as the exact bytes
//! of one data item, so the hub can route them without decoding and
//! re-encoding.

use std::fmt;

use bytes::Bytes;
use minicbor::{Decode, Decoder, Encode, Encoder};

use crate::error::DecodeError;
use crate::limits::DecodeLimits;
use crate::wellformed;

/// The encoding of CBOR `null`.
const NULL: &[u8] = &[0xf6];

/// Exactly one well-formed CBOR data item, kept as its encoded bytes.
///
/// Cloning is cheap (a reference count); slicing a decoded frame into
/// `RawValue`s never copies the payload.
///
/// ```
/// use plexus_protocol::RawValue;
/// let v = RawValue::encode(&(1u8, "two")).unwrap();
/// assert_eq!(v.as_bytes(), &[0x82, 0x01, 0x63, b't', b'w', b'o']);
/// let (a, b): (u8, String) = v.decode().unwrap();
/// assert_eq!((a, b.as_str()), (1, "two"));
/// assert!(RawValue::null().is_null());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawValue(Bytes);

impl RawValue {
    /// CBOR `null`, the params of a method that takes none.
    pub fn null() -> Self {
        RawValue(Bytes::from_static(NULL))
    }

    /// Wraps bytes after checking they hold exactly one well-formed item
    /// within `limits`.
    pub fn from_bytes(bytes: Bytes, limits: &DecodeLimits) -> Result<Self, DecodeError> {
        if bytes.len() > limits.max_frame_size {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: limits.max_frame_size,
            });
        }
        wellformed::check(&bytes, limits.effective_depth())?;
        Ok(RawValue(bytes))
    }

    /// Wraps bytes already known to hold exactly one well-formed item.
    ///
    /// Only for bytes this crate's decoder has checked, or that an encoder
    /// produced; other bytes would be sent on as a broken frame.
    pub(crate) fn from_checked(bytes: Bytes) -> Self {
        RawValue(bytes)
    }

    /// Encodes a value with minicbor.
    pub fn encode<T: Encode<()>>(
        value: &T,
    ) -> Result<Self, minicbor::encode::Error<std::convert::Infallible>> {
        Ok(RawValue(Bytes::from(minicbor::to_vec(value)?)))
    }

    /// Encodes a value with minicbor into a buffer of `capacity` bytes to
    /// start with (no reallocation when the size is known roughly).
    ///
    /// ```
    /// let v = plexus_protocol::RawValue::encode_sized(&[1u8, 2, 3], 16).unwrap();
    /// assert_eq!(v.decode::<[u8; 3]>().unwrap(), [1, 2, 3]);
    /// ```
    pub fn encode_sized<T: Encode<()>>(
        value: &T,
        capacity: usize,
    ) -> Result<Self, minicbor::encode::Error<std::convert::Infallible>> {
        let mut buf = Vec::with_capacity(capacity);
        minicbor::encode(value, &mut buf)?;
        Ok(RawValue(Bytes::from(buf)))
    }

    /// Decodes the value with minicbor.
    pub fn decode<'a, T: Decode<'a, ()>>(&'a self) -> Result<T, minicbor::decode::Error> {
        minicbor::decode(&self.0)
    }

    /// Converts a [`RawRef`] borrowed from this value's bytes into an owned
    /// `RawValue` without copying.
    ///
    /// # Panics
    /// If `sub` does not point into this value's bytes (a caller bug).
    pub fn slice_ref(&self, sub: RawRef<'_>) -> RawValue {
        RawValue(self.0.slice_ref(sub.0))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes as shared [`Bytes`].
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Encoded length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a data item has at least one byte. Present for API
    /// symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the value is CBOR `null`.
    pub fn is_null(&self) -> bool {
        self.0.as_ref() == NULL
    }

    /// Borrows the value as a [`RawRef`].
    pub fn as_raw_ref(&self) -> RawRef<'_> {
        RawRef(&self.0)
    }
}

impl Default for RawValue {
    fn default() -> Self {
        RawValue::null()
    }
}

impl fmt::Debug for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads can be large and private: show the size and a short prefix.
        let shown = &self.0[..self.0.len().min(16)];
        write!(f, "RawValue({} bytes: ", self.0.len())?;
        for b in shown {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > shown.len() {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

impl<C> Encode<C> for RawValue {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        Encoded(&self.0).encode(e, ctx)
    }
}

impl<'b, C> Decode<'b, C> for RawValue {
    /// Copies the item's bytes. To avoid the copy, decode a [`RawRef`] and
    /// convert it with [`RawValue::slice_ref`].
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let r = <RawRef<'b> as Decode<'b, C>>::decode(d, ctx)?;
        Ok(RawValue(Bytes::copy_from_slice(r.0)))
    }
}

/// A borrowed raw CBOR data item: the bytes of one item inside a larger
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRef<'b>(pub(crate) &'b [u8]);

impl<'b> RawRef<'b> {
    /// CBOR `null`.
    ///
    /// ```
    /// assert_eq!(plexus_protocol::RawRef::NULL.as_bytes(), &[0xf6]);
    /// ```
    pub const NULL: RawRef<'static> = RawRef(NULL);

    /// The item's encoded bytes.
    pub fn as_bytes(&self) -> &'b [u8] {
        self.0
    }

    /// Decodes the item with minicbor.
    pub fn decode<T: Decode<'b, ()>>(&self) -> Result<T, minicbor::decode::Error> {
        minicbor::decode(self.0)
    }
}

impl<C> Encode<C> for RawRef<'_> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        Encoded(self.0).encode(e, ctx)
    }
}

impl<'b, C> Decode<'b, C> for RawRef<'b> {
    fn decode(d: &mut Decoder<'b>, _ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let start = d.position();
        d.skip()?;
        let end = d.position();
        Ok(RawRef(&d.input()[start..end]))
    }
}

/// Bytes of one CBOR item that the caller has already encoded, written as
/// they are (no check). For encoders that build params or results once and
/// frame them later; the bytes must be exactly one well-formed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded<'a>(pub &'a [u8]);

impl<C> Encode<C> for Encoded<'_> {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.writer_mut()
            .write_all(self.0)
            .map_err(minicbor::encode::Error::write)
    }
}
