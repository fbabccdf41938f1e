//! Authentication: turning a JWT into a [`Principal`].
//!
//! A client's `auth` request carries a compact JWS. An [`Authenticator`],
//! built once from [`AuthSettings`], verifies it against one of three key
//! sources ([`KeySource`]): a shared HMAC secret, one PEM public key, or a
//! JWKS URL whose keys are cached and refreshed in the background.
//!
//! The rules, whatever the source:
//!
//! - The algorithm is pinned by the key, never taken from the token: a
//!   header `alg` that differs (including `"none"`) is
//!   [`InvalidToken::AlgorithmNotAllowed`].
//! - `exp` and `sub` are required; `nbf` is honoured; both dates get the
//!   configured leeway. An `exp` more than [`MAX_TOKEN_LIFETIME`] ahead is
//!   refused: no token is valid forever. `iss` and `aud` are checked only when configured.
//! - The `plexus` claim grants capabilities (see [`Capabilities`]); an
//!   absent claim grants nothing and an invalid pattern rejects the token.
//! - [`AuthError::Invalid`] means "do not retry with this token";
//!   [`AuthError::Unavailable`] means keys could not be had right now.
//!
//! Tokens and secrets are never logged. Mapping these errors to protocol
//! error and close codes is the session's job.
//!
//! | module | what it holds |
//! |---|---|
//! | `settings` | [`AuthSettings`], [`KeySource`], [`HmacAlg`] |
//! | `verify` | [`Authenticator`] |
//! | `header` | reading the JOSE header without trusting it |
//! | `pem` | loading PEM public keys |
//! | `capabilities` | [`Principal`], [`Capabilities`] |
//! | `claims` | the claim formats |
//! | `jwks` | the JWKS cache and fetcher |
//! | `error` | [`AuthError`], [`InvalidToken`], [`AuthSetupError`] |
//! | [`devkey`] | the development signing key file |
//! | [`mint`] | minting HMAC tokens |

mod capabilities;
mod claims;
pub mod devkey;
mod error;
mod header;
mod jwks;
pub mod mint;
mod pem;
mod settings;
mod verify;

pub use capabilities::{Capabilities, Principal};
pub use claims::{CAPABILITIES_CLAIM, MAX_CAPABILITY_PATTERNS, MAX_SUBJECT_LEN};
pub use devkey::load_or_create_dev_key;
pub use error::{AuthError, AuthSetupError, InvalidToken};
pub use jwks::{JwksError, MAX_JWKS_BYTES, MIN_RSA_BITS, UNKNOWN_KID_REFRESH_COOLDOWN};
pub use mint::{MintError, MintRequest, mint_hs};
pub use settings::{
    AuthSettings, DEFAULT_JWKS_REFRESH, DEFAULT_JWKS_TIMEOUT, DEFAULT_LEEWAY, HmacAlg, KeySource,
    MAX_LEEWAY, MIN_HMAC_SECRET_LEN, MIN_JWKS_REFRESH, UnknownHmacAlg,
};
pub use verify::{Authenticator, MAX_TOKEN_LEN, MAX_TOKEN_LIFETIME};
