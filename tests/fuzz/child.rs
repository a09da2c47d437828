//! One command of `scvi-rs` run in a child process, so that an abort (an allocation failure, a
//! stack overflow, a signal) or a hang is seen from outside instead of taking the harness down,
//! and its outcome classified.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The address space a child may use. Every allocation scvi-rs makes is checked against what it
/// can have (this limit included, see `limits::mem_available`), so a file that lies about its
/// sizes must give an error under this limit, never an allocation failure.
const CHILD_ADDRESS_SPACE: u64 = 6 << 30;

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1 with one `error:` message and no panic.
    CleanError,
    /// Exit 1 whose message says `error:` more or fewer times than once.
    UnclearError,
    /// A Rust panic (exit 101 or "panicked" on stderr).
    Panic,
    /// Killed by a signal it raised itself (abort, segfault, ...).
    Abort(i32),
    /// Still running at the deadline (then killed).
    Hang,
    /// Any other exit status.
    OtherExit(i32),
}

/// A finished command: how it ended, what it said, and whether it left a partial output behind.
#[derive(Debug)]
pub struct Ran {
    pub outcome: Outcome,
    pub stderr: String,
    /// What was left in the output folder that should not be: anything after a failure,
    /// temporaries after anything.
    pub partial: Option<String>,
}

impl Ran {
    /// Neither a panic, an abort, a hang, a strange exit status nor a partial output.
    pub fn is_clean(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Ok | Outcome::CleanError | Outcome::UnclearError
        ) && self.partial.is_none()
    }

    /// The one `error:` line (empty when none).
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or("")
    }
}

/// Run `scvi-rs ARGS` in `cwd` with `timeout`; `out` is the folder where outputs go (what is
/// there before the run, a user's files, must be there unchanged after a failure).
pub fn run(args: &[String], cwd: &Path, out: &Path, timeout: Duration) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scvi-rs"));
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_BACKTRACE", "0");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let space = libc::rlimit {
                rlim_cur: CHILD_ADDRESS_SPACE as libc::rlim_t,
                rlim_max: CHILD_ADDRESS_SPACE as libc::rlim_t,
            };
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_AS, &space);
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let before = snapshot(out);
    let mut child = cmd.spawn().expect("start scvi-rs");
    let mut pipe = child.stderr.take().expect("stderr piped");
    // Read stderr beside the wait, so that a chatty child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let start = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for scvi-rs") {
            break st;
        }
        if start.elapsed() > timeout {
            hung = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed scvi-rs");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stderr = reader.join().unwrap_or_default();
    let outcome = if hung {
        Outcome::Hang
    } else if stderr.contains("panicked") {
        Outcome::Panic
    } else if let Some(sig) = status.signal() {
        Outcome::Abort(sig)
    } else {
        match status.code() {
            Some(0) => Outcome::Ok,
            Some(1) if stderr.matches("error:").count() == 1 => Outcome::CleanError,
            Some(1) => Outcome::UnclearError,
            Some(101) => Outcome::Panic,
            Some(c) => Outcome::OtherExit(c),
            None => Outcome::OtherExit(-1),
        }
    };
    let partial = leftovers(out, &before, outcome != Outcome::Ok);
    Ran {
        outcome,
        stderr,
        partial,
    }
}

/// The entries under `out` with their size and modification time.
pub type Snapshot =
    std::collections::BTreeMap<std::path::PathBuf, (u64, Option<std::time::SystemTime>)>;

pub fn snapshot(out: &Path) -> Snapshot {
    let mut s = Snapshot::new();
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            s.insert(e.path(), (m.len(), m.modified().ok()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    s
}

/// What a command left in `out` that it should not have: temporaries always; after a failure,
/// anything new, and anything that was there before and is gone or changed.
fn leftovers(out: &Path, before: &Snapshot, failed: bool) -> Option<String> {
    let after = snapshot(out);
    let mut found = Vec::new();
    for p in after.keys() {
        let tmp = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".scvi-rs-tmp"));
        if tmp || (failed && !before.contains_key(p)) {
            found.push(format!("left {}", p.display()));
        }
    }
    if failed {
        for (p, v) in before {
            // A folder's size and time change with its entries: only its presence counts.
            let changed = match after.get(p) {
                None => true,
                Some(a) => !p.is_dir() && a != v,
            };
            if changed {
                found.push(format!("changed {}", p.display()));
            }
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}
