//! The command line: a thin layer over the library. Each command parses its flags, calls the
//! library, prints progress and results, and returns an error that `main` prints.

pub mod data_cmds;
pub mod demo;
pub mod doctor;
pub mod infer_cmds;
pub mod model_cmds;
pub mod options;

use anyhow::Result;

/// Run `f` on a rayon pool of `threads` threads (0: all cores).
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(f)
}
