//! Hashes as Nix parses and prints them: md5, sha1, sha256 and sha512 in
//! base16, Nix base32, base64 and SRI form, plus Nix's hash compression.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use digest::Digest;
use std::fmt;
use std::io;
use thiserror::Error;

use crate::nixbase32;

/// A hash algorithm Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix uses (`md5`, `sha1`, `sha256`, `sha512`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Parses an algorithm name.
    pub fn from_name(s: &str) -> Result<Self, HashError> {
        match s {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            _ => Err(HashError::UnknownAlgo(s.to_string())),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a hash string could not be parsed.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum HashError {
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgo(String),
    #[error("hash '{0}' does not include a type")]
    MissingAlgo(String),
    #[error("hash '{hash}' has wrong length for hash type '{algo}'")]
    WrongLength { hash: String, algo: HashAlgo },
    #[error("invalid base-{base} hash '{hash}'")]
    BadEncoding { hash: String, base: u32 },
    #[error("hash '{hash}' should have type '{expected}' but has '{got}'")]
    AlgoMismatch {
        hash: String,
        expected: HashAlgo,
        got: HashAlgo,
    },
}

/// How a hash is written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base16,
    Base32,
    Base64,
    Sri,
}

/// A digest together with the algorithm that produced it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_sri())
    }
}

impl Hash {
    /// Wraps a digest; panics if the length does not match `algo`.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Self {
        assert_eq!(digest.len(), algo.size(), "digest length for {algo}");
        Hash {
            algo,
            digest: digest.to_vec(),
        }
    }

    /// Hashes a byte string.
    pub fn of(algo: HashAlgo, data: &[u8]) -> Self {
        let mut h = Hasher::new(algo);
        h.update(data);
        h.finish()
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Lower-case hexadecimal digest.
    pub fn to_base16(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.digest.len() * 2);
        for b in &self.digest {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Nix base32 digest.
    pub fn to_base32(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// Standard padded base64 digest.
    pub fn to_base64(&self) -> String {
        B64.encode(&self.digest)
    }

    /// `algo-base64`, the Subresource Integrity form.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// Prints the digest in `enc`, with the `algo:` prefix when `prefix`
    /// (SRI always carries its algorithm).
    pub fn encode(&self, enc: Encoding, prefix: bool) -> String {
        let body = match enc {
            Encoding::Base16 => self.to_base16(),
            Encoding::Base32 => self.to_base32(),
            Encoding::Base64 => self.to_base64(),
            Encoding::Sri => return self.to_sri(),
        };
        if prefix {
            format!("{}:{}", self.algo, body)
        } else {
            body
        }
    }

    /// `algo:base32`, the form narinfo files and `nix-store -q --hash` use.
    pub fn to_nix_base32_prefixed(&self) -> String {
        self.encode(Encoding::Base32, true)
    }

    /// Parses `algo:digest` or SRI `algo-base64`.
    pub fn parse_any_prefixed(s: &str) -> Result<Self, HashError> {
        Self::parse_inner(s, None, true)
    }

    /// Parses a hash that may carry its algorithm (`algo:`, SRI) or not, in
    /// which case `algo` is used; when both are present they must agree.
    pub fn parse_any(s: &str, algo: Option<HashAlgo>) -> Result<Self, HashError> {
        Self::parse_inner(s, algo, false)
    }

    /// Parses a bare digest (base16, base32 or base64) of the given algorithm.
    pub fn parse_non_sri_unprefixed(s: &str, algo: HashAlgo) -> Result<Self, HashError> {
        Self::decode_body(s, s, algo, false)
    }

    fn parse_inner(s: &str, algo: Option<HashAlgo>, need_prefix: bool) -> Result<Self, HashError> {
        let (found, body, sri) = if let Some((a, rest)) = s.split_once(':') {
            (Some(HashAlgo::from_name(a)?), rest, false)
        } else if let Some((a, rest)) = s.split_once('-') {
            match HashAlgo::from_name(a) {
                Ok(a) => (Some(a), rest, true),
                Err(e) if need_prefix => return Err(e),
                Err(_) => (None, s, false),
            }
        } else {
            (None, s, false)
        };
        let algo = match (found, algo) {
            (Some(f), Some(want)) if f != want => {
                return Err(HashError::AlgoMismatch {
                    hash: s.to_string(),
                    expected: want,
                    got: f,
                })
            }
            (Some(f), _) => f,
            (None, Some(want)) if !need_prefix => want,
            _ => return Err(HashError::MissingAlgo(s.to_string())),
        };
        Self::decode_body(s, body, algo, sri)
    }

    fn decode_body(whole: &str, body: &str, algo: HashAlgo, sri: bool) -> Result<Self, HashError> {
        let size = algo.size();
        let bad = |base| HashError::BadEncoding {
            hash: whole.to_string(),
            base,
        };
        let b64len = size.div_ceil(3) * 4;
        if !sri && body.len() == size * 2 {
            let mut digest = Vec::with_capacity(size);
            for i in 0..size {
                let byte =
                    u8::from_str_radix(body.get(2 * i..2 * i + 2).ok_or_else(|| bad(16))?, 16)
                        .map_err(|_| bad(16))?;
                digest.push(byte);
            }
            Ok(Hash { algo, digest })
        } else if !sri && body.len() == nixbase32::encoded_len(size) {
            let digest = nixbase32::decode_exact(body.as_bytes(), size).map_err(|_| bad(32))?;
            Ok(Hash { algo, digest })
        } else if sri || body.len() == b64len {
            let digest = B64.decode(body).map_err(|_| bad(64))?;
            if digest.len() != size {
                return Err(HashError::WrongLength {
                    hash: whole.to_string(),
                    algo,
                });
            }
            Ok(Hash { algo, digest })
        } else {
            Err(HashError::WrongLength {
                hash: whole.to_string(),
                algo,
            })
        }
    }
}

/// Folds a digest into `size` bytes by XOR, as Nix's `compressHash` does.
pub fn compress_hash(digest: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for (i, b) in digest.iter().enumerate() {
        out[i % size] ^= b;
    }
    out
}

/// An incremental hasher for any [`HashAlgo`].
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        match self {
            Hasher::Md5(h) => Hash::new(HashAlgo::Md5, &h.finalize()),
            Hasher::Sha1(h) => Hash::new(HashAlgo::Sha1, &h.finalize()),
            Hasher::Sha256(h) => Hash::new(HashAlgo::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Hash::new(HashAlgo::Sha512, &h.finalize()),
        }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that hashes and counts everything passing through to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
}

impl<W: io::Write> HashingWriter<W> {
    pub fn new(inner: W, algo: HashAlgo) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algo),
            written: 0,
        }
    }

    /// Returns the inner writer, the hash and the number of bytes written.
    pub fn finish(self) -> (W, Hash, u64) {
        (self.inner, self.hasher.finish(), self.written)
    }
}

impl<W: io::Write> io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_every_encoding() {
        let h = Hash::of(HashAlgo::Sha256, b"");
        assert_eq!(
            h.to_base16(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            h.to_base32(),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        for enc in [
            Encoding::Base16,
            Encoding::Base32,
            Encoding::Base64,
            Encoding::Sri,
        ] {
            assert_eq!(Hash::parse_any_prefixed(&h.encode(enc, true)).unwrap(), h);
            if enc != Encoding::Sri {
                assert_eq!(
                    Hash::parse_any(&h.encode(enc, false), Some(HashAlgo::Sha256)).unwrap(),
                    h
                );
            }
        }
        assert_eq!(
            Hash::of(HashAlgo::Md5, b"").to_base16(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Hash::of(HashAlgo::Sha1, b"").to_base16(),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert_eq!(Hash::of(HashAlgo::Sha512, b"abc").to_base16().len(), 128);
    }

    #[test]
    fn refuses_bad_hashes() {
        assert!(matches!(
            Hash::parse_any_prefixed("sha257:00"),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_any_prefixed("abcd"),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            Hash::parse_any_prefixed("sha256:abcd"),
            Err(HashError::WrongLength { .. })
        ));
        let h = Hash::of(HashAlgo::Sha1, b"x").to_sri();
        assert!(matches!(
            Hash::parse_any(&h, Some(HashAlgo::Sha256)),
            Err(HashError::AlgoMismatch { .. })
        ));
    }

    #[test]
    fn compresses() {
        let h = Hash::of(HashAlgo::Sha256, b"hello");
        let c = compress_hash(h.digest(), 20);
        assert_eq!(c.len(), 20);
        let d = h.digest();
        assert_eq!(c[0], d[0] ^ d[20]);
        assert_eq!(c[19], d[19]);
    }
}
