//! Writing outputs without ever losing what was there: the one place where scvi-rs creates,
//! replaces and cleans up files and directories.
//!
//! Every output is written under a temporary name in the folder it will live in and renamed into
//! place only when complete, so a failed or interrupted command leaves what was there before and
//! never a half-written file. The rules a user can rely on:
//!
//! - An existing output is refused unless the caller passes `force` (the command line's `--force`).
//! - Even with `force`, a directory is replaced only when it is a complete output of the same kind
//!   that scvi-rs wrote (a model directory, a store: [`OutputKind::is_ours`] says), holding nothing
//!   else; a file only when it is a plain file. Anything else is refused: scvi-rs never deletes
//!   what it did not create.
//! - Temporaries carry the mark [`TMP_MARK`] and the writing process's id. Those of a process
//!   that is gone (a killed run) are removed the next time something is written in that folder.
//! - While a temporary exists it is registered here, so that a second Ctrl-C (see
//!   [`crate::interrupt`]) can remove every one before the process exits.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Prefix of every temporary name scvi-rs creates.
pub const TMP_MARK: &str = ".scvi-rs-tmp.";
/// Prefix of an output being replaced, for the moment between the two renames of a commit.
const OLD_MARK: &str = ".scvi-rs-old.";
/// The longest file name most file systems take (bytes).
const NAME_MAX: usize = 255;

/// What kind of output a path holds, and how to tell that an existing one is scvi-rs' own.
#[derive(Clone, Copy)]
pub struct OutputKind {
    /// For messages: "a scvi-rs model directory", "a scvi-rs store", "a file".
    pub what: &'static str,
    /// A directory (true) or a single file (false).
    pub dir: bool,
    /// Whether the directory at the path is a complete output of this kind written by scvi-rs,
    /// holding nothing else; `Err` says why not. Unused for files.
    pub is_ours: fn(&Path) -> std::result::Result<(), String>,
}

impl OutputKind {
    /// A single file: replaced (with `force`) when it is a plain file.
    pub const FILE: OutputKind = OutputKind {
        what: "a file",
        dir: false,
        is_ours: |_| Ok(()),
    };
}

/// Check that a directory holds only the names in `allowed` (the files a kind writes).
pub fn only_files(dir: &Path, allowed: &[&str]) -> std::result::Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !allowed.contains(&name.as_ref()) {
            return Err(format!(
                "it holds '{name}', which scvi-rs does not write there"
            ));
        }
    }
    Ok(())
}

fn shown(flag: &str, path: &Path) -> String {
    if flag.is_empty() {
        path.display().to_string()
    } else {
        format!("{flag} {}", path.display())
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Check, before any work starts, that `path` can be written as an output of `kind`: its folder
/// exists, its name is not too long, and whatever stands there may be replaced (see the module
/// documentation). `flag` names the option in messages (`--out`), or is empty.
pub fn check_output(path: &Path, kind: &OutputKind, force: bool, flag: &str) -> Result<()> {
    let who = shown(flag, path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{who}: not a file or directory name")))?;
    if name.len() > NAME_MAX {
        return Err(Error::Config(format!(
            "{who}: the name is {} bytes long; file systems take at most {NAME_MAX}",
            name.len()
        )));
    }
    let parent = parent_of(path);
    if !parent.is_dir() {
        return Err(Error::Config(format!(
            "{who}: the folder {} does not exist",
            parent.display()
        )));
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !force {
        return Err(Error::Config(format!(
            "{who}: already exists; pass --force to replace it"
        )));
    }
    let refuse = |why: String| {
        Err(Error::Config(format!(
            "{who}: exists and {why}; refusing to replace it, even with --force, because scvi-rs \
             did not write it as {} (remove it yourself or choose another name)",
            kind.what
        )))
    };
    if kind.dir {
        if !meta.is_dir() {
            return refuse("is not a directory".into());
        }
        if let Err(why) = (kind.is_ours)(path) {
            return refuse(format!("is not {} ({why})", kind.what));
        }
    } else if !meta.is_file() {
        return refuse(if meta.is_dir() {
            "is a directory".into()
        } else {
            "is not a plain file".into()
        });
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The registry of live temporaries.

fn live() -> &'static Mutex<Vec<PathBuf>> {
    static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    &LIVE
}

fn register(p: &Path) {
    if let Ok(mut l) = live().lock() {
        l.push(p.to_path_buf());
    }
}

fn unregister(p: &Path) {
    if let Ok(mut l) = live().lock() {
        l.retain(|q| q != p);
    }
}

/// Remove every temporary this process has open (the last act of a forced exit).
pub fn remove_live_temporaries() {
    let paths: Vec<PathBuf> = match live().try_lock() {
        Ok(l) => l.clone(),
        Err(_) => return,
    };
    for p in paths {
        remove_any(&p);
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// A temporary name beside `target`: `.scvi-rs-tmp.<pid>.<n>.<name>`, cut to fit `NAME_MAX`.
fn temporary_name(target: &Path, mark: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut t = format!("{mark}{}.{n}.", std::process::id());
    let room = NAME_MAX - t.len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    t.push_str(&name[..cut]);
    parent_of(target).join(t)
}

/// The process id in a temporary's name, if it is one of ours.
fn temporary_pid(file_name: &str) -> Option<u32> {
    let rest = file_name
        .strip_prefix(TMP_MARK)
        .or_else(|| file_name.strip_prefix(OLD_MARK))?;
    rest.split('.').next()?.parse().ok()
}

/// Remove temporaries in `folder` left by scvi-rs processes that are gone (a run that was killed),
/// saying so on standard error. Where the system cannot tell whether a process lives (no
/// `/proc`), they are only reported.
pub fn clean_stale_temporaries(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let can_tell = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if !can_tell {
            eprintln!(
                "note: {} looks like a temporary left by an interrupted scvi-rs run; remove it if \
                 no scvi-rs command is running",
                e.path().display()
            );
        } else if !Path::new("/proc").join(pid.to_string()).exists() {
            remove_any(&e.path());
            eprintln!(
                "note: removed {}, left by an interrupted scvi-rs run",
                e.path().display()
            );
        }
    }
}

fn cannot_write(who: &str, tmp: &Path, e: std::io::Error) -> Error {
    Error::Config(format!(
        "{who}: cannot write there ({e}; while creating {})",
        tmp.display()
    ))
}

/// Replace `target` (which [`check_output`] accepted) by the finished temporary `tmp`.
fn replace(tmp: &Path, target: &Path, kind: &OutputKind) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(_) => std::fs::rename(tmp, target).map_err(|e| Error::io(target, e)),
        Ok(_) if !kind.dir => std::fs::rename(tmp, target).map_err(|e| Error::io(target, e)),
        Ok(_) => {
            // Check again: the directory may have changed since the command started.
            check_output(target, kind, true, "")?;
            let old = temporary_name(target, OLD_MARK);
            std::fs::rename(target, &old).map_err(|e| Error::io(target, e))?;
            if let Err(e) = std::fs::rename(tmp, target) {
                let _ = std::fs::rename(&old, target);
                return Err(Error::io(target, e));
            }
            let _ = std::fs::remove_dir_all(&old);
            Ok(())
        }
    }
}

/// A directory being written: files go into a temporary directory beside the target, which
/// [`commit`](Self::commit) renames into place. Dropped uncommitted, the temporary is removed.
pub struct AtomicDir {
    tmp: PathBuf,
    target: PathBuf,
    kind: OutputKind,
    committed: bool,
}

impl AtomicDir {
    /// Check the output ([`check_output`]) and create the temporary directory, so that an output
    /// that cannot be written fails here, before any work.
    pub fn create(target: &Path, kind: &OutputKind, force: bool, flag: &str) -> Result<Self> {
        check_output(target, kind, force, flag)?;
        let parent = parent_of(target);
        clean_stale_temporaries(&parent);
        let tmp = temporary_name(target, TMP_MARK);
        std::fs::create_dir(&tmp).map_err(|e| cannot_write(&shown(flag, target), &tmp, e))?;
        register(&tmp);
        Ok(AtomicDir {
            tmp,
            target: target.to_path_buf(),
            kind: *kind,
            committed: false,
        })
    }

    /// The temporary directory, to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Write one file of the directory.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.tmp.join(name);
        let mut f = File::create(&p).map_err(|e| Error::io(&p, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&p, e))?;
        f.sync_all().map_err(|e| Error::io(&p, e))
    }

    /// Rename the finished directory into place (replacing what [`check_output`] accepted).
    pub fn commit(mut self) -> Result<()> {
        replace(&self.tmp, &self.target, &self.kind)?;
        sync_folder(&parent_of(&self.target));
        unregister(&self.tmp);
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            unregister(&self.tmp);
        }
    }
}

/// A temporary file, removed when dropped unless [`keep`](Self::keep) or an [`AtomicFile`] commit
/// takes it: scratch space beside an output (e.g. the .h5ad writer's side file of indices).
pub struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// A new empty temporary file beside `target` (`flag` names the option in messages).
    pub fn beside(target: &Path, flag: &str) -> Result<(Self, File)> {
        let path = temporary_name(target, TMP_MARK);
        let f =
            File::create_new(&path).map_err(|e| cannot_write(&shown(flag, target), &path, e))?;
        register(&path);
        Ok((TempFile { path, kept: false }, f))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) -> PathBuf {
        self.kept = true;
        unregister(&self.path);
        std::mem::take(&mut self.path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
            unregister(&self.path);
        }
    }
}

/// A file being written under a temporary name; [`commit`](Self::commit) syncs it and renames it
/// into place. Dropped uncommitted, the temporary is removed.
pub struct AtomicFile {
    tmp: TempFile,
    file: Option<File>,
    target: PathBuf,
}

impl AtomicFile {
    /// Check the output ([`check_output`]) and create the temporary file.
    pub fn create(target: &Path, force: bool, flag: &str) -> Result<Self> {
        check_output(target, &OutputKind::FILE, force, flag)?;
        clean_stale_temporaries(&parent_of(target));
        let (tmp, file) = TempFile::beside(target, flag)?;
        Ok(AtomicFile {
            tmp,
            file: Some(file),
            target: target.to_path_buf(),
        })
    }

    /// The temporary path (for messages and for writers that reopen it).
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("an uncommitted AtomicFile has its file")
    }

    /// Sync and rename into place.
    pub fn commit(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| Error::io(&self.target, e))?;
        }
        replace(self.tmp.path(), &self.target, &OutputKind::FILE)?;
        self.tmp.keep();
        sync_folder(&parent_of(&self.target));
        Ok(())
    }
}

/// Write `bytes` to `path` atomically: refused if `path` exists unless `force` (see
/// [`check_output`]).
pub fn write_file(path: &Path, bytes: &[u8], force: bool, flag: &str) -> Result<()> {
    let mut f = AtomicFile::create(path, force, flag)?;
    let tmp = f.path().to_path_buf();
    f.file().write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.commit()
}

/// Write `bytes` to `path` atomically, replacing whatever file scvi-rs keeps there (caches,
/// checkpoints). For outputs a user names, use [`write_file`].
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, true, "")
}

/// Make the renames in `folder` durable (best effort: not every system can sync a directory).
fn sync_folder(folder: &Path) {
    if let Ok(d) = File::open(folder) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("scvi-rs-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const KIND: OutputKind = OutputKind {
        what: "a test output",
        dir: true,
        is_ours: |p| only_files(p, &["a.txt", "b.txt"]),
    };

    #[test]
    fn a_foreign_directory_survives_even_with_force() {
        let d = scratch("foreign");
        let out = d.join("proj");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        for force in [false, true] {
            assert!(AtomicDir::create(&out, &KIND, force, "--out").is_err());
        }
        assert_eq!(
            std::fs::read_to_string(out.join("notes.txt")).unwrap(),
            "mine"
        );
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn our_directory_is_replaced_only_with_force_and_only_whole() {
        let d = scratch("ours");
        let out = d.join("o");
        let w = AtomicDir::create(&out, &KIND, false, "--out").unwrap();
        w.write("a.txt", b"1").unwrap();
        w.commit().unwrap();
        assert!(AtomicDir::create(&out, &KIND, false, "--out").is_err());
        let w = AtomicDir::create(&out, &KIND, true, "--out").unwrap();
        w.write("b.txt", b"2").unwrap();
        // Until commit, the old output stands.
        assert!(out.join("a.txt").exists());
        w.commit().unwrap();
        assert!(!out.join("a.txt").exists());
        assert_eq!(std::fs::read(out.join("b.txt")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    }

    #[test]
    fn a_dropped_write_leaves_nothing() {
        let d = scratch("dropped");
        let out = d.join("o.npy");
        {
            let mut f = AtomicFile::create(&out, false, "--out").unwrap();
            f.file().write_all(b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
        write_file(&out, b"y", false, "--out").unwrap();
        assert!(write_file(&out, b"z", false, "--out").is_err());
        write_file(&out, b"z", true, "--out").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"z");
    }

    #[test]
    fn long_names_and_missing_folders_are_refused_before_work() {
        let d = scratch("names");
        let long = d.join("x".repeat(300));
        let e = AtomicFile::create(&long, false, "--out")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("at most 255"), "{e}");
        // A name that fits leaves room for the temporary's mark.
        let fits = d.join("y".repeat(250));
        write_file(&fits, b"ok", false, "--out").unwrap();
        let e = write_file(&d.join("no/such/dir.npy"), b"", false, "--out")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist") && e.contains("--out"), "{e}");
    }

    #[test]
    fn temporaries_of_dead_processes_are_cleaned() {
        let d = scratch("stale");
        // A pid that cannot be alive (above the kernel's pid_max ceiling).
        let stale = d.join(format!("{TMP_MARK}4294967294.0.out"));
        std::fs::create_dir(&stale).unwrap();
        let mine = d.join("keep.txt");
        std::fs::write(&mine, "x").unwrap();
        clean_stale_temporaries(&d);
        if Path::new("/proc/self").exists() {
            assert!(!stale.exists());
        }
        assert!(mine.exists());
    }
}
