//! NAR compression in a binary cache: zstd by default; xz and none also read
//! and written. Everything streams; nothing holds a whole NAR in memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{XzDecoder, ZstdDecoder};
use async_compression::tokio::write::{XzEncoder, ZstdEncoder};
use async_compression::Level;
use kiln_nix::hash::{Hash, HashAlgo, Hasher};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

use crate::backend::ByteStream;

/// A compression method of NAR files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is (`.nar`).
    None,
    /// xz (`.nar.xz`), Nix's historical default.
    Xz,
    /// zstd (`.nar.zst`), Kiln's default.
    #[default]
    Zstd,
}

impl Compression {
    /// Parses the narinfo `Compression:` value.
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "none" | "" => Some(Compression::None),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The narinfo `Compression:` value.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }

    /// The file name suffix of a NAR compressed this way.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => ".nar",
            Compression::Xz => ".nar.xz",
            Compression::Zstd => ".nar.zst",
        }
    }

    /// Wraps a compressed stream into one that yields the plain NAR.
    pub fn decoder(self, input: ByteStream) -> ByteStream {
        match self {
            Compression::None => input,
            Compression::Xz => {
                let mut d = XzDecoder::new(BufReader::with_capacity(1 << 16, input));
                d.multiple_members(true);
                Box::pin(d)
            }
            Compression::Zstd => {
                let mut d = ZstdDecoder::new(BufReader::with_capacity(1 << 16, input));
                d.multiple_members(true);
                Box::pin(d)
            }
        }
    }

    /// Wraps a writer so that what is written to it reaches `out` compressed.
    pub fn encoder<W: AsyncWrite + Unpin>(self, out: W) -> Encoder<W> {
        match self {
            Compression::None => Encoder::None(out),
            Compression::Xz => Encoder::Xz(XzEncoder::with_quality(out, Level::Precise(6))),
            Compression::Zstd => Encoder::Zstd(ZstdEncoder::with_quality(out, Level::Precise(1))),
        }
    }
}

/// A compressing writer for one [`Compression`].
pub enum Encoder<W> {
    /// Passes bytes through.
    None(W),
    /// Compresses with xz.
    Xz(XzEncoder<W>),
    /// Compresses with zstd.
    Zstd(ZstdEncoder<W>),
}

impl<W> Encoder<W> {
    /// The writer underneath, to take what was already written to it.
    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::None(w) => w,
            Encoder::Xz(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// The writer underneath; call after `shutdown`.
    pub fn into_inner(self) -> W {
        match self {
            Encoder::None(w) => w,
            Encoder::Xz(e) => e.into_inner(),
            Encoder::Zstd(e) => e.into_inner(),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Encoder<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Encoder::None(w) => Pin::new(w).poll_write(cx, buf),
            Encoder::Xz(w) => Pin::new(w).poll_write(cx, buf),
            Encoder::Zstd(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::None(w) => Pin::new(w).poll_flush(cx),
            Encoder::Xz(w) => Pin::new(w).poll_flush(cx),
            Encoder::Zstd(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::None(w) => Pin::new(w).poll_shutdown(cx),
            Encoder::Xz(w) => Pin::new(w).poll_shutdown(cx),
            Encoder::Zstd(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A writer that hashes (sha256) and counts what passes to its inner writer.
pub struct HashingAsyncWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W> HashingAsyncWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingAsyncWriter {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            written: 0,
        }
    }

    /// The inner writer (hash and count cover only what passes through
    /// this wrapper).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the hash and the byte count.
    pub fn finish(self) -> (W, Hash, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for HashingAsyncWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.hasher.update(&buf[..n]);
            this.written += n as u64;
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The running check of a NAR against its expected hash (any algorithm)
/// and size; mismatches are [`io::ErrorKind::InvalidData`] errors that name
/// the data.
pub struct NarCheck {
    hasher: Hasher,
    expected_hash: Hash,
    expected_size: u64,
    seen: u64,
    what: String,
}

impl NarCheck {
    /// A check of the data `what` names against `hash` and `size`.
    pub fn new(hash: Hash, size: u64, what: impl Into<String>) -> Self {
        NarCheck {
            hasher: Hasher::new(hash.algo()),
            expected_hash: hash,
            expected_size: size,
            seen: 0,
            what: what.into(),
        }
    }

    fn bad(&self, msg: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {msg}", self.what))
    }

    /// Takes the next bytes; an error as soon as there are more than
    /// expected.
    pub fn update(&mut self, data: &[u8]) -> io::Result<()> {
        self.seen += data.len() as u64;
        if self.seen > self.expected_size {
            let msg = format!(
                "NAR is larger than the expected {} bytes",
                self.expected_size
            );
            return Err(self.bad(msg));
        }
        self.hasher.update(data);
        Ok(())
    }

    /// The verdict at the end of the data.
    pub fn finish(self) -> io::Result<()> {
        if self.seen != self.expected_size {
            let msg = format!(
                "NAR size mismatch: expected {}, got {}",
                self.expected_size, self.seen
            );
            return Err(self.bad(msg));
        }
        let got = self.hasher.clone().finish();
        if got != self.expected_hash {
            let msg = format!(
                "NAR hash mismatch: expected {}, got {}",
                self.expected_hash.to_nix_base32_prefixed(),
                got.to_nix_base32_prefixed()
            );
            return Err(self.bad(msg));
        }
        Ok(())
    }
}

/// A reader that checks, at its end, that what it passed on has the
/// expected hash and size (see [`NarCheck`]). A mismatch, or more data than
/// expected, turns into an [`io::ErrorKind::InvalidData`] error, so a
/// consumer that commits only after a clean end never commits bad data.
pub struct VerifyingReader {
    inner: ByteStream,
    check: Option<NarCheck>,
}

impl VerifyingReader {
    /// Verifies `inner` against `hash` (any algorithm) and `size`; `what`
    /// names the data in errors.
    pub fn new(inner: ByteStream, hash: Hash, size: u64, what: impl Into<String>) -> Self {
        VerifyingReader {
            inner,
            check: Some(NarCheck::new(hash, size, what)),
        }
    }
}

impl AsyncRead for VerifyingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return Poll::Ready(match this.check.take() {
                Some(check) => check.finish(),
                None => Ok(()),
            });
        }
        if let Some(check) = this.check.as_mut() {
            if let Err(e) = check.update(new) {
                // Hand out nothing of a stream that is already known to be bad.
                buf.set_filled(before);
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn roundtrip(c: Compression, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = tokio::fs::File::create(&path).await.unwrap();
        let mut enc = c.encoder(file);
        enc.write_all(data).await.unwrap();
        enc.shutdown().await.unwrap();
        drop(enc);
        let file = tokio::fs::File::open(&path).await.unwrap();
        let mut dec = c.decoder(Box::pin(file));
        let mut back = Vec::new();
        dec.read_to_end(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn every_compression_round_trips() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for c in [Compression::None, Compression::Xz, Compression::Zstd] {
            assert_eq!(roundtrip(c, &data).await, data, "{c:?}");
            assert_eq!(Compression::from_name(c.name()), Some(c));
        }
        assert_eq!(Compression::from_name("bzip2"), None);
    }

    #[tokio::test]
    async fn verifier_refuses_flipped_and_short_data() {
        let data = b"some nar bytes".to_vec();
        let hash = Hash::of(HashAlgo::Sha256, &data);
        async fn read(d: Vec<u8>, hash: &Hash, size: u64) -> io::Result<Vec<u8>> {
            let mut r =
                VerifyingReader::new(Box::pin(std::io::Cursor::new(d)), hash.clone(), size, "x");
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.map(|_| out)
        }
        assert_eq!(
            read(data.clone(), &hash, data.len() as u64).await.unwrap(),
            data
        );
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        let e = read(flipped, &hash, data.len() as u64).await.unwrap_err();
        assert!(e.to_string().contains("hash mismatch"), "{e}");
        let e = read(data[..5].to_vec(), &hash, data.len() as u64)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
        let e = read(data.clone(), &hash, 4).await.unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
    }
}
