//! Encoding of [`Envelope`]s as MessagePack, with a version check.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::message::Message;

/// The protocol version this build speaks. A receiver refuses envelopes of
/// another major version instead of guessing at their meaning.
pub const PROTOCOL_VERSION: u16 = 1;

/// Upper bound on one encoded message. Build outputs travel through the
/// store or as [`crate::message::NarChunk`]s, never as one huge message.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// What travels on the wire: a version, a unique id and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u16,
    pub id: uuid::Uuid,
    pub body: Message,
}

impl Envelope {
    /// Wraps a message with a fresh id and the current version.
    pub fn new(body: Message) -> Self {
        Envelope {
            version: PROTOCOL_VERSION,
            id: uuid::Uuid::new_v4(),
            body,
        }
    }
}

/// Why bytes could not be turned into an [`Envelope`] or back.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("malformed message ({len} bytes): {source}")]
    Decode {
        len: usize,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("message speaks protocol version {got}, this build speaks {PROTOCOL_VERSION}")]
    Version { got: u16 },
}

/// Encodes an envelope (named fields, so fields may be added compatibly).
pub fn encode(env: &Envelope) -> Result<Vec<u8>, CodecError> {
    let bytes = rmp_serde::to_vec_named(env)?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes and version-checks an envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u16,
    }
    let v: VersionOnly = rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode {
        len: bytes.len(),
        source,
    })?;
    if v.version != PROTOCOL_VERSION {
        return Err(CodecError::Version { got: v.version });
    }
    rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode {
        len: bytes.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    #[test]
    fn round_trips_and_checks_version() {
        let env = Envelope::new(Message::CancelJob {
            job_id: uuid::Uuid::new_v4(),
        });
        let bytes = encode(&env).unwrap();
        assert_eq!(decode(&bytes).unwrap(), env);

        let mut old = env.clone();
        old.version = 99;
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        assert!(matches!(
            decode(&bytes),
            Err(CodecError::Version { got: 99 })
        ));
    }

    #[test]
    fn refuses_garbage() {
        for junk in [&b""[..], b"\xff\xff", b"\x81\xa7version\xa1x"] {
            assert!(decode(junk).is_err(), "{junk:?}");
        }
    }
}
