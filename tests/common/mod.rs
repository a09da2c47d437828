//! Helpers shared by the integration tests. Each test binary includes this module (`mod common;`)
//! and uses a part of it: running the binary ([`cli`]), scratch folders and fixture paths
//! ([`files`]), the shared data sets ([`data`]), what the GPU tests need ([`gpu`]: a device or a
//! printed reason to skip, tolerances and the checker that prints the first mismatches), and seeded
//! random inputs.
#![allow(dead_code)]

pub mod cli;
pub mod data;
pub mod files;
pub mod gpu;

/// The seed of a randomised test: `SCVI_RS_TEST_SEED` when set (a number repeats a run; `random`
/// draws a fresh one, to explore), else a fixed seed, so that the suite CI runs is deterministic.
pub fn test_seed() -> u64 {
    match std::env::var("SCVI_RS_TEST_SEED").ok().as_deref() {
        Some("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        Some(s) => s.parse().unwrap_or(FIXED_SEED),
        None => FIXED_SEED,
    }
}

/// The seed the suite uses by default.
pub const FIXED_SEED: u64 = 20_261_129;

/// A seed (`test_seed`), printed with `what` so that a failure can be repeated, and a generator.
pub fn seeded(what: &str) -> (u64, Rng) {
    let seed = test_seed();
    println!("{what}: seed {seed} (SCVI_RS_TEST_SEED={seed} repeats it)");
    (seed, Rng(seed))
}

/// SplitMix64: the tests' own inputs (weights, counts, shapes), independent of the library's Philox.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (hi - lo) * self.uniform()) as f32)
            .collect()
    }
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
