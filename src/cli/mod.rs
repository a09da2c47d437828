//! The command line: a thin layer over the library. Each command parses its flags, calls the
//! library, prints progress and results, and returns an error that `main` prints.

pub mod data_cmds;
pub mod demo;
pub mod doctor;
pub mod infer_cmds;
pub mod interop_cmds;
pub mod model_cmds;
pub mod options;

use anyhow::Result;

/// Run `f` on a rayon pool of `threads` threads (0: all cores). A count far beyond the machine's
/// CPUs (`scvi_rs::limits::cap_threads`) is capped to them, with a warning: tens of thousands of
/// threads would take minutes to start and compute nothing faster.
pub fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let (threads, warning) = scvi_rs::limits::cap_threads(threads);
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    pool.install(f)
}
