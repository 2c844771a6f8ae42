//! The authentication hook. Every handler asks the server's [`Authenticator`] before doing
//! anything; Handshake hands it the client's payload. Today's server runs with [`AllowAll`];
//! a token or mTLS scheme plugs in here without touching the handlers.
use bytes::Bytes;
use tonic::metadata::MetadataMap;

use crate::error::Result;

pub trait Authenticator: Send + Sync + 'static {
    /// Answers a Handshake payload (e.g. credentials) with a payload (e.g. a token).
    fn handshake(&self, payload: &[u8]) -> Result<Bytes>;
    /// Admits or refuses a call by its headers (UNAUTHENTICATED on refusal).
    fn authorize(&self, headers: &MetadataMap) -> Result<()>;
}

/// No authentication: every call is admitted (the embedded, local default).
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn handshake(&self, _payload: &[u8]) -> Result<Bytes> {
        Ok(Bytes::new())
    }

    fn authorize(&self, _headers: &MetadataMap) -> Result<()> {
        Ok(())
    }
}
