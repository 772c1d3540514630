//! Nix's own base32 alphabet and bit order.
//!
//! Nix encodes hashes with the alphabet `0123456789abcdfghijklmnpqrsvwxyz`
//! (no `e`, `o`, `u`, `t`) and emits the *last* 5-bit group first, so the
//! result is not RFC 4648 base32.

use thiserror::Error;

/// The 32 characters Nix uses, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a string is not valid Nix base32.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("invalid character {0:?} in Nix base32 string")]
    InvalidChar(char),
    #[error("Nix base32 string has length {got}, expected {expected}")]
    InvalidLength { got: usize, expected: usize },
    #[error("Nix base32 string encodes more bits than fit in {0} bytes")]
    Overflow(usize),
}

/// Length of the Nix base32 encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a Nix base32 string of `len` characters decodes to.
pub const fn decoded_len(len: usize) -> usize {
    len * 5 / 8
}

/// Encodes bytes as Nix base32.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = (input[i] as u16) >> j;
        let high = if i + 1 < input.len() {
            (input[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

fn digit(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Returns true when every byte of `s` is in the Nix base32 alphabet.
pub fn is_valid_str(s: &[u8]) -> bool {
    s.iter().all(|&c| digit(c).is_some())
}

/// Decodes a Nix base32 string into exactly `out_len` bytes.
pub fn decode_exact(s: &[u8], out_len: usize) -> Result<Vec<u8>, DecodeError> {
    if s.len() != encoded_len(out_len) {
        return Err(DecodeError::InvalidLength {
            got: s.len(),
            expected: encoded_len(out_len),
        });
    }
    let mut out = vec![0u8; out_len];
    for n in 0..s.len() {
        let c = s[s.len() - n - 1];
        let d = digit(c).ok_or(DecodeError::InvalidChar(c as char))? as u16;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= (d << j) as u8;
        let carry = d >> (8 - j);
        if i + 1 < out_len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(DecodeError::Overflow(out_len));
        }
    }
    Ok(out)
}

/// Decodes a Nix base32 string whose length determines the output size.
pub fn decode(s: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let n = decoded_len(s.len());
    decode_exact(s, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // sha256 of the empty string, as `nix hash to-base32` prints it.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let enc = encode(&bytes);
        assert_eq!(enc, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode(enc.as_bytes()).unwrap(), bytes);
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(b"e0"), Err(DecodeError::InvalidChar('e')));
        assert!(matches!(
            decode_exact(b"zz", 1),
            Err(DecodeError::Overflow(1))
        ));
        assert!(matches!(
            decode_exact(b"000", 1),
            Err(DecodeError::InvalidLength { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let enc = encode(&bytes);
            proptest::prop_assert_eq!(enc.len(), encoded_len(bytes.len()));
            proptest::prop_assert_eq!(decode_exact(enc.as_bytes(), bytes.len()).unwrap(), bytes);
        }
    }
}
