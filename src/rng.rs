//! Philox4x32-10, a counter-based random number generator (Salmon et al. 2011).
//!
//! Every random number in training (split, shuffling, reparameterisation noise, dropout) is a pure
//! function of (seed, stream, counter), so results do not depend on the thread count or on which
//! engine draws them: the CUDA kernels implement the same function and draw the same numbers.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: four 32-bit outputs for a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// Streams of randomness keyed by the seed. A stream is a purpose (noise, dropout, shuffling) and a
/// step; element `i` of the stream is read from block `i / 4`, word `i % 4`.
#[derive(Clone, Copy, Debug)]
pub struct Philox {
    key: [u32; 2],
}

/// Purposes, so that no two uses of the generator ever share numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    Split = 1,
    Shuffle = 2,
    LatentNoise = 3,
    LibraryNoise = 4,
    EncoderDropout = 5,
    LibraryEncoderDropout = 6,
    Init = 7,
    Latent = 8,
    /// After training (`crate::infer`): the draws of z from its posterior, keyed by cell and
    /// `transform_batch` slot, one block run per Monte Carlo sample (`fill_normal_at`).
    Posterior = 9,
    /// The draws of a latent library from its posterior, keyed like `Posterior`.
    PosteriorLibrary = 10,
    /// Posterior predictive counts: the gamma, Poisson and zero-inflation draws of a (cell,
    /// sample) row.
    Predictive = 11,
    /// Differential expression: which (cell, sample) pairs are drawn, per comparison and side.
    Resample = 12,
}

impl Philox {
    pub fn new(seed: u64) -> Self {
        Philox {
            key: [seed as u32, (seed >> 32) as u32],
        }
    }

    /// Block `block` of stream (`stream`, `index`): its words `4 block .. 4 block + 4`, as
    /// [`u32_at`](Self::u32_at) gives them one by one (one Philox evaluation for four words).
    #[inline]
    pub fn block(&self, stream: Stream, index: u64, block: u64) -> [u32; 4] {
        philox4x32(
            [
                block as u32,
                (block >> 32) as u32,
                index as u32,
                ((index >> 32) as u32) ^ ((stream as u32) << 24),
            ],
            self.key,
        )
    }

    /// The 32-bit word `i` of stream (`stream`, `index`).
    #[inline]
    pub fn u32_at(&self, stream: Stream, index: u64, i: u64) -> u32 {
        self.block(stream, index, i / 4)[(i % 4) as usize]
    }

    /// A uniform in the open interval (0, 1) with 24 bits: `(u + 0.5) / 2^32` on the top bits.
    #[inline]
    pub fn uniform_at(&self, stream: Stream, index: u64, i: u64) -> f64 {
        uniform_open(self.u32_at(stream, index, i))
    }

    /// Fill `out` with standard normals (Box-Muller on pairs of uniforms).
    pub fn fill_normal(&self, stream: Stream, index: u64, out: &mut [f64]) {
        self.fill_normal_at(stream, index, 0, out)
    }

    /// Fill `out` with standard normals from block `first_block` of stream (`stream`, `index`)
    /// on: the numbers `fill_normal` would put at `out[2 * first_block..]`, without drawing those
    /// before them (a Monte Carlo sample `s` of `n` numbers starts at block `s * ceil(n / 2)`).
    pub fn fill_normal_at(&self, stream: Stream, index: u64, first_block: u64, out: &mut [f64]) {
        for (pair, chunk) in out.chunks_mut(2).enumerate() {
            let b = self.block(stream, index, first_block + pair as u64);
            let (z0, z1) = box_muller(b[0], b[1]);
            chunk[0] = z0;
            if chunk.len() > 1 {
                chunk[1] = z1;
            }
        }
    }

    /// Fill `out` with uniforms in (0, 1).
    pub fn fill_uniform(&self, stream: Stream, index: u64, out: &mut [f64]) {
        for (blk, chunk) in out.chunks_mut(4).enumerate() {
            let b = self.block(stream, index, blk as u64);
            for (o, w) in chunk.iter_mut().zip(b) {
                *o = uniform_open(w);
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates with Lemire's bounded integers).
    pub fn permutation(&self, stream: Stream, index: u64, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        let mut counter = 0u64;
        for i in (1..n).rev() {
            let bound = (i + 1) as u64;
            let j = loop {
                let r = ((self.u32_at(stream, index, counter) as u64) << 32)
                    | self.u32_at(stream, index, counter + 1) as u64;
                counter += 2;
                let m = (r as u128) * (bound as u128);
                if (m as u64) >= (u64::MAX - bound + 1) % bound {
                    break (m >> 64) as usize;
                }
            };
            p.swap(i, j);
        }
        p
    }
}

#[inline]
pub fn uniform_open(w: u32) -> f64 {
    ((w >> 8) as f64 + 0.5) / 16_777_216.0
}

#[inline]
pub fn box_muller(w0: u32, w1: u32) -> (f64, f64) {
    let u1 = uniform_open(w0);
    let u2 = uniform_open(w1);
    let r = (-2.0 * u1.ln()).sqrt();
    let t = 2.0 * std::f64::consts::PI * u2;
    (r * t.cos(), r * t.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123's known-answer vectors for philox4x32-10.
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32([0xffffffff; 4], [0xffffffff; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut v = vec![0.0; 200_000];
        Philox::new(7).fill_normal(Stream::LatentNoise, 3, &mut v);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let g = Philox::new(42);
        let p = g.permutation(Stream::Shuffle, 0, 1000);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, g.permutation(Stream::Shuffle, 0, 1000));
        assert_ne!(p, g.permutation(Stream::Shuffle, 1, 1000));
    }
}
