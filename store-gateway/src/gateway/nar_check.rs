//! The structure check of an uploaded NAR: before a NAR is stored, it is
//! decompressed and parsed whole with Kiln's strict reader
//! ([`kiln_nix::nar::NarReader`]), so the gateway never stores what no
//! client could unpack (hostile names, bad padding, truncation, garbage).

use std::io::Read;
use std::path::Path;

use tokio_util::io::SyncIoBridge;

use crate::compression::Compression;
use crate::key::Key;

/// The compression of a NAR key, from its suffix; `None` for a suffix the
/// gateway cannot read back (and so does not accept).
pub(super) fn compression_of(key: &Key) -> Option<Compression> {
    [Compression::None, Compression::Xz, Compression::Zstd]
        .into_iter()
        .find(|c| key.as_str().ends_with(c.extension()))
}

/// Why an uploaded NAR was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum NarRefused {
    /// Not a well-formed NAR (after decompression).
    #[error("'{key}' is not a valid NAR: {message}")]
    Malformed { key: String, message: String },
    /// Larger than the gateway accepts once decompressed.
    #[error("'{key}' decompresses to more than {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    /// The staged file could not be read back.
    #[error("reading back the upload of '{key}' from '{file}': {message}")]
    Io {
        key: String,
        file: String,
        message: String,
    },
}

/// Reads `limit` bytes at most, remembering whether there was more.
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? > 0 {
                self.exceeded = true;
            }
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Parses the NAR in `file` (compressed with `compression`, decompressing
/// to `limit` bytes at most) to its end; returns its uncompressed size.
pub(super) async fn check_structure(
    key: &Key,
    file: &Path,
    compression: Compression,
    limit: u64,
) -> Result<u64, NarRefused> {
    let io_err = |e: std::io::Error| NarRefused::Io {
        key: key.to_string(),
        file: file.display().to_string(),
        message: e.to_string(),
    };
    let f = tokio::fs::File::open(file).await.map_err(io_err)?;
    let plain = compression.decoder(Box::pin(tokio::io::BufReader::with_capacity(1 << 16, f)));
    let key_name = key.to_string();
    tokio::task::spawn_blocking(move || {
        let mut input = Bounded {
            inner: SyncIoBridge::new(plain),
            left: limit,
            exceeded: false,
        };
        let parsed = kiln_nix::nar::copy(&mut input, std::io::sink());
        if input.exceeded {
            return Err(NarRefused::TooLarge {
                key: key_name,
                limit,
            });
        }
        match parsed {
            Ok(_) => Ok(limit - input.left),
            Err(e) => Err(NarRefused::Malformed {
                key: key_name,
                message: error_chain(&e),
            }),
        }
    })
    .await
    .map_err(|e| io_err(std::io::Error::other(e)))?
}

/// An error and its causes, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
