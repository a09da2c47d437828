//! What a trained model is used for beyond its loss: latent-space quality metrics (the demo, the
//! end-to-end tests, the benchmarks) and output files (`.npy`, `.csv`).

pub mod metrics;
pub mod output;
