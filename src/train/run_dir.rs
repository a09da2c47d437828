//! The model directory of a training run (`--out`): its checkpoints go there while it trains, its
//! model when it ends, so that `train --resume DIR` needs nothing else.
//!
//! Until the first checkpoint the directory is not touched (an existing one is only checked, as
//! any output is, by [`crate::atomic`]). The first checkpoint creates it (or, with `--force`,
//! replaces the model directory that stood there) as a whole, by renaming a finished temporary
//! directory; later checkpoints replace `checkpoint.safetensors` inside it, again by renaming a
//! finished temporary file. At the end the model's files are written the same way, `model.json`
//! last (a directory without it is a run that has not finished), and the checkpoint is removed.
//! A run killed at any moment therefore leaves the previous checkpoint or the new one, whole, and
//! the temporaries it leaves are removed the next time scvi-rs writes there.

use crate::atomic::{clean_stale_temporaries, replace_file, AtomicDir, AtomicFile};
use crate::error::{Error, Result};
use crate::model::io::{CHECKPOINT_FILE, META_FILE, MODEL_DIR};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// See the module documentation.
pub struct RunDir {
    path: PathBuf,
    force: bool,
    flag: &'static str,
    /// The directory holds this run's checkpoint (so it is this run's to write into).
    holds_run: bool,
}

impl RunDir {
    /// Check, before any work, that `path` can become this run's model directory: its folder
    /// exists and is writable, and whatever stands there may be replaced (`force`, and only a
    /// model directory scvi-rs wrote). `flag` names the option in messages.
    pub fn prepare(path: &Path, force: bool, flag: &'static str) -> Result<Self> {
        if path.is_dir() {
            // Leftovers of a killed run (a checkpoint being written) would make the directory
            // look foreign; they are ours and their process is gone.
            clean_stale_temporaries(path);
        }
        // Staging (and dropping) the directory checks all of it, the folder's permissions too.
        drop(AtomicDir::create(path, &MODEL_DIR, force, flag)?);
        Ok(RunDir {
            path: path.to_path_buf(),
            force,
            flag,
            holds_run: false,
        })
    }

    /// The directory of a run being resumed: it holds the run's checkpoint.
    pub fn resume(path: &Path) -> Self {
        clean_stale_temporaries(path);
        RunDir {
            path: path.to_path_buf(),
            force: true,
            flag: "",
            holds_run: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checkpoint's path.
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(CHECKPOINT_FILE)
    }

    /// Write a checkpoint (replacing the previous one in one rename).
    pub fn write_checkpoint(&mut self, bytes: &[u8]) -> Result<()> {
        if !self.holds_run {
            let staged = AtomicDir::create(&self.path, &MODEL_DIR, self.force, self.flag)?;
            let file = staged.path().join(CHECKPOINT_FILE);
            let mut f = std::fs::File::create(&file).map_err(|e| Error::io(&file, e))?;
            write_all_or_die_for_tests(&mut f, bytes, &file)?;
            f.sync_all().map_err(|e| Error::io(&file, e))?;
            staged.commit()?;
            self.holds_run = true;
            return Ok(());
        }
        let target = self.checkpoint();
        let mut f = AtomicFile::create(&target, true, "")?;
        let tmp = f.path().to_path_buf();
        write_all_or_die_for_tests(f.file(), bytes, &tmp)?;
        f.commit()
    }

    /// Write the finished model's files (name, bytes) and remove the checkpoint.
    pub fn finish(self, mut files: Vec<(&'static str, Vec<u8>)>) -> Result<()> {
        // model.json last: until it is there, the directory is an unfinished run.
        files.sort_by_key(|(name, _)| *name == META_FILE);
        if !self.holds_run {
            let staged = AtomicDir::create(&self.path, &MODEL_DIR, self.force, self.flag)?;
            for (name, bytes) in &files {
                staged.write(name, bytes)?;
            }
            return staged.commit();
        }
        for (name, bytes) in &files {
            replace_file(&self.path.join(name), bytes)?;
        }
        let ck = self.checkpoint();
        match std::fs::remove_file(&ck) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&ck, e)),
            _ => Ok(()),
        }
    }
}

/// Environment variable for the tests of what a kill leaves: `SCVI_RS_TEST_KILL_IN_CHECKPOINT=N`
/// makes the N-th checkpoint this process writes stop half way through its temporary file, the
/// process killing itself with SIGKILL there (no destructor, no clean-up: what a power cut or
/// the OOM killer leaves).
pub const KILL_IN_CHECKPOINT: &str = "SCVI_RS_TEST_KILL_IN_CHECKPOINT";

fn write_all_or_die_for_tests(f: &mut std::fs::File, bytes: &[u8], path: &Path) -> Result<()> {
    static WRITES: AtomicUsize = AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    let die = std::env::var(KILL_IN_CHECKPOINT)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(n);
    if die {
        let half = &bytes[..bytes.len() / 2];
        f.write_all(half).map_err(|e| Error::io(path, e))?;
        let _ = f.sync_all();
        // SAFETY: kill(2) on our own pid with a valid signal number; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    f.write_all(bytes).map_err(|e| Error::io(path, e))
}
