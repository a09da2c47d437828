//! Running long work from Python: on a rayon pool of the requested threads, with the interpreter
//! lock released, on a worker thread while the calling thread watches for Ctrl-C.
//!
//! The calling thread waits for the result in slices of [`POLL`]; between slices it takes the
//! GIL just long enough for `PyErr_CheckSignals` (which runs Python's SIGINT handler, as a
//! terminal's Ctrl-C or a notebook's "interrupt kernel" raise it). The first interrupt asks
//! training to stop after the epoch under way (`interrupt::request_after_epoch`: the model keeps
//! that epoch's weights); a second one stops at the next step (`interrupt::request`), the call
//! then raising `KeyboardInterrupt` and the model keeping what it had before the call.

use crate::errors::to_py;
use pyo3::prelude::*;
use std::sync::mpsc;
use std::time::Duration;

/// How often the waiting thread looks for a pending Ctrl-C.
const POLL: Duration = Duration::from_millis(100);

/// Run `work` on `threads` threads (0: all cores) with the GIL released; Ctrl-C handled as above
/// when `gentle` (training), else the first one stops at once. Returns the work's result and how
/// many interrupts arrived.
pub fn run<T: Send>(
    py: Python<'_>,
    threads: usize,
    gentle: bool,
    work: impl FnOnce() -> scvi_rs::Result<T> + Send,
) -> PyResult<(T, usize)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("thread pool: {e}")))?;
    scvi_rs::interrupt::reset();
    let (result, interrupts) = py.allow_threads(|| {
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            s.spawn(move || {
                // A send fails only if the receiver is gone, which it never is before this ends.
                let _ = tx.send(pool.install(work));
            });
            let mut interrupts = 0usize;
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(r) => break (r, interrupts),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let signalled = Python::with_gil(|py| py.check_signals().is_err());
                        if signalled {
                            interrupts += 1;
                            if interrupts == 1 && gentle {
                                scvi_rs::interrupt::request_after_epoch();
                            } else {
                                scvi_rs::interrupt::request();
                            }
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        break (
                            Err(scvi_rs::Error::Config("the worker thread panicked".into())),
                            interrupts,
                        )
                    }
                }
            }
        })
    });
    scvi_rs::interrupt::reset();
    Ok((result.map_err(to_py)?, interrupts))
}
