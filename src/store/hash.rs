//! The store's checksum: a word-wise FNV-1a variant, "wfnv64", fast enough to run over the whole
//! matrix at conversion (several GB/s) and simple enough to re-implement from its description.
//!
//! ```text
//! h = 0xcbf29ce484222325
//! for each 8-byte little-endian word w of the input (the last one zero-padded):
//!     h = rotl64((h ^ w) * 0x100000001b3, 29)          (wrapping multiplication)
//! h = (h ^ total_length_in_bytes) * 0x9e3779b97f4a7c15
//! h = h ^ (h >> 32)
//! ```
//!
//! Every step is a bijection of `h` for a fixed word and of the word for a fixed `h`, so any change
//! to a single word changes the result; it is an integrity check, not a cryptographic hash.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming wfnv64: feed bytes in any split, get the same result as one call over all of them.
#[derive(Clone, Debug)]
pub struct Hasher64 {
    h: u64,
    tail: [u8; 8],
    tail_len: usize,
    total: u64,
}

impl Default for Hasher64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher64 {
    pub fn new() -> Self {
        Hasher64 {
            h: OFFSET,
            tail: [0; 8],
            tail_len: 0,
            total: 0,
        }
    }

    #[inline]
    fn word(h: u64, w: u64) -> u64 {
        (h ^ w).wrapping_mul(PRIME).rotate_left(29)
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            self.h = Self::word(self.h, u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        let mut h = self.h;
        for c in &mut chunks {
            h = Self::word(h, u64::from_le_bytes(c.try_into().unwrap()));
        }
        self.h = h;
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub fn finish(&self) -> u64 {
        let mut h = self.h;
        if self.tail_len > 0 {
            let mut last = [0u8; 8];
            last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            h = Self::word(h, u64::from_le_bytes(last));
        }
        h = (h ^ self.total).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }
}

/// wfnv64 of one byte string.
pub fn wfnv64(bytes: &[u8]) -> u64 {
    let mut h = Hasher64::new();
    h.update(bytes);
    h.finish()
}

/// The checksum as written in the header: 16 lower-case hex digits.
pub fn hex(h: u64) -> String {
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_invariant_and_sensitive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = wfnv64(&data);
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let mut h = Hasher64::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finish(), whole);
        }
        let mut bad = data.clone();
        bad[123] ^= 1;
        assert_ne!(wfnv64(&bad), whole);
        // Trailing zeros change the length, hence the result.
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(wfnv64(&longer), whole);
        assert_eq!(hex(0xab), "00000000000000ab");
    }
}
