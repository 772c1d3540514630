//! Finding store-path references in file contents, like Nix's
//! `RefScanSink`: given the 32-character Nix base32 hash parts of candidate
//! store paths, report which of them occur in a byte stream.
//!
//! The stream may arrive in chunks of any size; a hash split across chunk
//! boundaries is still found. The search skips ahead past any byte that is
//! not in the Nix base32 alphabet, so typical binary data is scanned in far
//! fewer than one comparison per byte. [`RefScanner`] is an [`io::Write`]
//! sink, so it can sit beside a NAR writer (for example behind a tee).

use std::collections::{BTreeSet, HashSet};
use std::io;
use thiserror::Error;

use crate::nixbase32;

/// Length of a store path's hash part in Nix base32 characters.
pub const HASH_PART_LEN: usize = 32;

/// Why a candidate could not be scanned for.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RefScanError {
    #[error("candidate reference '{0}' is not a {HASH_PART_LEN}-character Nix base32 hash part")]
    InvalidHashPart(String),
}

/// `true` for each byte of the Nix base32 alphabet.
const IS_BASE32: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < nixbase32::ALPHABET.len() {
        t[nixbase32::ALPHABET[i] as usize] = true;
        i += 1;
    }
    t
};

/// A streaming reference scanner.
///
/// ```
/// use kiln_nix::refscan::RefScanner;
/// let a = "0c8lvqacx2a3crc2vjdmpmb9m5cmhjdv";
/// let b = "1b9xsk6d3rv2dcwfjgpygpvyicnlz6h6";
/// let mut s = RefScanner::new([a, b]).unwrap();
/// s.feed(b"#!/nix/store/0c8lvqacx2a3");
/// s.feed(b"crc2vjdmpmb9m5cmhjdv-bash/bin/sh\n");
/// assert_eq!(s.found(), vec![a.to_string()]);
/// ```
#[derive(Debug, Clone)]
pub struct RefScanner {
    wanted: HashSet<[u8; HASH_PART_LEN]>,
    found: BTreeSet<[u8; HASH_PART_LEN]>,
    /// The last `HASH_PART_LEN - 1` bytes seen, for matches across chunks.
    tail: Vec<u8>,
}

impl RefScanner {
    /// Scans for the given hash parts (32 Nix base32 characters each).
    pub fn new<I, S>(hash_parts: I) -> Result<Self, RefScanError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut wanted = HashSet::new();
        for h in hash_parts {
            let h = h.as_ref();
            let part = <[u8; HASH_PART_LEN]>::try_from(h)
                .ok()
                .filter(|p| p.iter().all(|&c| IS_BASE32[c as usize]))
                .ok_or_else(|| {
                    RefScanError::InvalidHashPart(String::from_utf8_lossy(h).into_owned())
                })?;
            wanted.insert(part);
        }
        Ok(RefScanner {
            wanted,
            found: BTreeSet::new(),
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        })
    }

    /// Scans the next chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.wanted.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            // Matches that start in the tail and end in this chunk.
            let old = self.tail.len();
            self.tail
                .extend_from_slice(&data[..data.len().min(HASH_PART_LEN - 1)]);
            let joint = std::mem::take(&mut self.tail);
            self.search(&joint);
            self.tail = joint;
            self.tail.truncate(old);
        }
        self.search(data);
        let keep = HASH_PART_LEN - 1;
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    /// The hash parts found so far, sorted.
    pub fn found(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect()
    }

    /// Whether `hash_part` was found so far.
    pub fn contains(&self, hash_part: &str) -> bool {
        <[u8; HASH_PART_LEN]>::try_from(hash_part.as_bytes()).is_ok_and(|h| self.found.contains(&h))
    }

    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        'outer: while i + HASH_PART_LEN <= s.len() {
            // Check from the end of the window: a non-base32 byte at offset
            // j rules out every window that contains it.
            for j in (0..HASH_PART_LEN).rev() {
                if !IS_BASE32[s[i + j] as usize] {
                    i += j + 1;
                    continue 'outer;
                }
            }
            if let Ok(window) = <&[u8; HASH_PART_LEN]>::try_from(&s[i..i + HASH_PART_LEN]) {
                if self.wanted.remove(window) {
                    self.found.insert(*window);
                    if self.wanted.is_empty() {
                        return;
                    }
                }
            }
            i += 1;
        }
    }
}

impl io::Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "0c8lvqacx2a3crc2vjdmpmb9m5cmhjdv";
    const B: &str = "1b9xsk6d3rv2dcwfjgpygpvyicnlz6h6";
    const C: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";

    fn scan(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = RefScanner::new([A, B, C]).unwrap();
        for c in chunks {
            s.feed(c);
        }
        s.found()
    }

    #[test]
    fn finds_whole_and_split_hashes() {
        let text = format!("x/nix/store/{A}-foo\0{B}");
        assert_eq!(scan(&[text.as_bytes()]), vec![A.to_string(), B.to_string()]);
        for cut in 0..text.len() {
            let (l, r) = text.as_bytes().split_at(cut);
            assert_eq!(
                scan(&[l, r]),
                vec![A.to_string(), B.to_string()],
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        assert_eq!(scan(&bytes), vec![A.to_string(), B.to_string()]);
    }

    #[test]
    fn needs_the_whole_hash() {
        assert!(scan(&[&A.as_bytes()[..31]]).is_empty());
        assert!(scan(&[&A.as_bytes()[1..]]).is_empty());
        // Inside a longer base32 run the window still matches, as in Nix.
        assert_eq!(scan(&[format!("aa{A}aa").as_bytes()]), vec![A.to_string()]);
    }

    #[test]
    fn refuses_bad_candidates() {
        assert!(RefScanner::new(["short"]).is_err());
        assert!(RefScanner::new(["eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"]).is_err());
    }

    #[test]
    fn is_a_writer() {
        let mut s = RefScanner::new([A]).unwrap();
        io::Write::write_all(&mut s, format!("..{A}..").as_bytes()).unwrap();
        assert!(s.contains(A));
        assert!(!s.contains(B));
    }

    /// The result is the same however the stream is cut up, and equals a
    /// naive substring search.
    fn naive(data: &[u8], hashes: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = hashes
            .iter()
            .filter(|h| data.windows(HASH_PART_LEN).any(|w| w == h.as_bytes()))
            .map(|h| h.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    proptest! {
        #[test]
        fn chunking_does_not_matter(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(A.as_bytes().to_vec()),
                    Just(B.as_bytes().to_vec()),
                    Just(A.as_bytes()[..20].to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..40),
                    proptest::collection::vec(proptest::sample::select(nixbase32::ALPHABET.to_vec()), 0..40),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let data: Vec<u8> = parts.concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut s = RefScanner::new([A, B, C]).unwrap();
            let mut prev = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                s.feed(&data[prev..c]);
                prev = c;
            }
            prop_assert_eq!(s.found(), naive(&data, &[A, B, C]));
        }
    }
}
