//! [`Payload`]: an opaque CBOR value inside an HTTP body document.
//!
//! Bodies are documents with named fields, in JSON or in CBOR (decision
//! W3); the values they carry for the hub (`data`, `params`, `info`) are
//! any CBOR item. A `Payload` reads one from either format — from JSON by
//! the JSON projection's reverse ([`plexus_protocol::json`]), from CBOR
//! exactly — and writes the JSON projection to a human-readable format
//! (JSON) and the item itself to CBOR.

use plexus_protocol::{DecodeLimits, RawValue};
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Any CBOR item, as its encoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload(pub RawValue);

impl Payload {
    /// CBOR `null`.
    pub fn null() -> Payload {
        Payload(RawValue::null())
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::null()
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            plexus_protocol::json::raw_to_json(&self.0).serialize(s)
        } else {
            let v: ciborium::Value =
                ciborium::from_reader(self.0.as_bytes()).map_err(S::Error::custom)?;
            v.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        if d.is_human_readable() {
            let v = serde_json::Value::deserialize(d)?;
            Ok(Payload(plexus_protocol::json::to_cbor(&v)))
        } else {
            let v = ciborium::Value::deserialize(d)?;
            let mut buf = Vec::new();
            ciborium::into_writer(&v, &mut buf).map_err(D::Error::custom)?;
            // ciborium writes definite lengths; the check below also bounds
            // the depth like any frame's.
            RawValue::from_bytes(buf.into(), &DecodeLimits::default())
                .map(Payload)
                .map_err(D::Error::custom)
        }
    }
}

impl utoipa::PartialSchema for Payload {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::Object::builder()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some(
                "Any value: in JSON its JSON projection (docs/http.md), in CBOR the item itself",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Payload {}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Doc {
        data: Payload,
    }

    #[test]
    fn json_and_cbor_bodies_carry_the_same_item() {
        let j: Doc = serde_json::from_str(r#"{"data": {"n": 1}}"#).unwrap();
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![(
                "data".into(),
                ciborium::Value::Map(vec![("n".into(), 1.into())]),
            )]),
            &mut cbor,
        )
        .unwrap();
        let c: Doc = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(j.data, c.data);
        assert_eq!(j.data.0.as_bytes(), &[0xa1, 0x61, b'n', 0x01]);
    }

    #[test]
    fn byte_strings_survive_cbor_and_project_to_base64url_in_json() {
        let p = Payload(
            RawValue::from_bytes(vec![0x42, 0xff, 0x00].into(), &DecodeLimits::default()).unwrap(),
        );
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""_wA""#);
        let mut cbor = Vec::new();
        ciborium::into_writer(&p, &mut cbor).unwrap();
        assert_eq!(cbor, [0x42, 0xff, 0x00]);
    }
}
