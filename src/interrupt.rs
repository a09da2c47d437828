//! Ctrl-C and SIGTERM: stop at the next safe point, never in the middle of a write.
//!
//! [`install`] (called by the command line, not by the library on its own) starts a thread that
//! waits for SIGINT / SIGTERM. The first signal only raises a flag; long-running work (training
//! steps, conversion chunks, inference minibatches) calls [`check`] at safe points and unwinds
//! with [`Error::Interrupted`], so every writer drops its temporaries and training can write a
//! checkpoint. A second signal removes every live temporary ([`crate::atomic`]) and exits at
//! once. Without [`install`], nothing here changes how the process reacts to signals.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static AFTER_EPOCH: AtomicBool = AtomicBool::new(false);

/// SIGINT's number: what [`request`] records when no signal is involved (a caller's own stop).
pub const SIGINT: i32 = signal_hook::consts::SIGINT;

/// Catch SIGINT and SIGTERM for the rest of the process (idempotent).
pub fn install() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut out = Ok(());
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(mut signals) => {
                std::thread::spawn(move || {
                    for sig in signals.forever() {
                        if REQUESTED.load(Ordering::SeqCst) {
                            crate::atomic::remove_live_temporaries();
                            eprintln!("\nstopped at once; temporaries removed");
                            std::process::exit(128 + sig);
                        }
                        SIGNAL.store(sig, Ordering::SeqCst);
                        REQUESTED.store(true, Ordering::SeqCst);
                        eprintln!(
                            "\ninterrupted: stopping at the next safe point (press Ctrl-C again to \
                             stop at once)"
                        );
                    }
                });
            }
            Err(e) => out = Err(Error::Config(format!("cannot catch signals: {e}"))),
        }
    });
    out
}

/// Ask running work to stop at its next safe point, as a first Ctrl-C does.
pub fn request() {
    SIGNAL.store(SIGINT, Ordering::SeqCst);
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Ask training to stop once the epoch under way has finished (and been validated and recorded),
/// leaving the model of that epoch: a gentle stop for embedders (the Python package's first
/// Ctrl-C), where [`request`] stops at the next step and discards the unfinished run.
pub fn request_after_epoch() {
    AFTER_EPOCH.store(true, Ordering::SeqCst);
}

/// Whether a stop after the epoch was requested; forgets the request (training stops once).
pub fn take_after_epoch() -> bool {
    AFTER_EPOCH.swap(false, Ordering::SeqCst)
}

/// Forget a request (after it has been handled, e.g. between notebook calls).
pub fn reset() {
    REQUESTED.store(false, Ordering::SeqCst);
    AFTER_EPOCH.store(false, Ordering::SeqCst);
    SIGNAL.store(0, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(Error::Interrupted)` once a stop was requested: call at safe points.
#[inline]
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted {
            signal: SIGNAL.load(Ordering::SeqCst),
        })
    } else {
        Ok(())
    }
}
