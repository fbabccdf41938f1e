//! The Plexus hub.
#![forbid(unsafe_code)]
