//! What the machine can give, checked before the work asks for it: memory before a large
//! allocation, disk space before a large write, threads before a pool is built, and regular files
//! before a read (a named pipe or a device given as input would block or never end).
//!
//! Every size that comes from a file or a flag passes through here before memory is allocated for
//! it, so that a file that lies about its sizes, or a flag with an absurd value, is an error saying
//! what was asked and what there is ("needs 372.5 GiB of memory; this machine has 21.3 GiB
//! available"), never an allocation failure that aborts the process or a swap storm.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Below this, allocations are not checked (reading `/proc/meminfo` would cost more than they do,
/// and no machine that runs scvi-rs lacks 64 MiB).
const UNCHECKED_BYTES: u64 = 64 << 20;

/// Bytes as a user reads them: `512 B`, `3.2 MiB`, `372.5 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The memory this process can still allocate, in bytes: what the kernel says can be allocated
/// without swapping (`MemAvailable` in `/proc/meminfo`), lowered to what a container's memory
/// limit (cgroup v2 `memory.max` less `memory.current`) or an address-space limit (`ulimit -v`,
/// as batch schedulers set it, less the address space in use) leaves. None where none of these
/// is known, in which case nothing is refused on its account.
pub fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let line = t.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    let read_u64 =
        |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = read_u64("/sys/fs/cgroup/memory.max")
        .map(|max| max.saturating_sub(read_u64("/sys/fs/cgroup/memory.current").unwrap_or(0)));
    let address_space = {
        let mut lim = std::mem::MaybeUninit::<libc::rlimit>::uninit();
        // SAFETY: getrlimit fills the struct when it returns 0, the only case in which it is read.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_AS, lim.as_mut_ptr()) };
        // SAFETY: rc == 0, so the struct was written.
        let cur = (rc == 0).then(|| unsafe { lim.assume_init() }.rlim_cur);
        cur.filter(|&c| c != libc::RLIM_INFINITY).map(|c| {
            let used = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|t| {
                    let l = t.lines().find(|l| l.starts_with("VmSize:"))?;
                    l.split_whitespace().nth(1)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
                * 1024;
            #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
            (c as u64).saturating_sub(used)
        })
    };
    [meminfo, cgroup, address_space].into_iter().flatten().min()
}

/// An error unless `bytes` of memory can be had; `what` says what needs them (called only to
/// build the message), e.g. "data.h5ad: obs/_index (300,000,000 names)".
pub fn ensure_memory(bytes: u64, what: impl FnOnce() -> String) -> Result<()> {
    if bytes <= UNCHECKED_BYTES {
        return Ok(());
    }
    match mem_available() {
        Some(avail) if bytes > avail => Err(Error::Resource(format!(
            "{} needs {} of memory; this machine has {} available",
            what(),
            human_bytes(bytes),
            human_bytes(avail)
        ))),
        _ => Ok(()),
    }
}

/// `n` elements of `size` bytes each, or `u64::MAX` when that overflows (which no machine has).
pub fn bytes_of(n: u64, size: u64) -> u64 {
    n.saturating_mul(size)
}

/// Free space for an unprivileged writer on the file system holding `dir` (`statvfs`'s
/// `f_bavail * f_frsize`); None where it cannot be asked.
pub fn free_disk(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type, which statvfs
    // fills entirely when it returns 0 (the only case in which it is read).
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it wrote the whole struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u64 on Linux x86-64, narrower elsewhere
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    avail.checked_mul(frsize)
}

/// An error unless the file system that will hold `target` has `bytes` free; `what` names the
/// output (e.g. "--out sim.store (1,000,000 cells x 2,000 genes)").
pub fn ensure_disk(target: &Path, bytes: u64, what: impl FnOnce() -> String) -> Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match free_disk(dir) {
        Some(free) if bytes > free => Err(Error::Resource(format!(
            "{} needs about {} of disk space; {} has {} free",
            what(),
            human_bytes(bytes),
            dir.display(),
            human_bytes(free)
        ))),
        _ => Ok(()),
    }
}

/// What kind of file system object `path` is, in words, when it is neither a regular file nor a
/// directory (after following symbolic links); None for those two (and when it does not exist:
/// the caller's open says so).
pub fn special_kind(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path).ok()?.file_type();
    Some(if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        return None;
    })
}

/// An error when `path` exists but is a named pipe, a socket or a device: reading one would block
/// until another program writes to it, or never end. `flag` names where the path came from
/// ("--genes", or "" for an input).
pub fn refuse_special(path: &Path, flag: &str) -> Result<()> {
    match special_kind(path) {
        Some(kind) => Err(Error::format(
            path,
            format!(
                "is {kind}; {} must be a regular file or a folder",
                if flag.is_empty() { "an input" } else { flag }
            ),
        )),
        None => Ok(()),
    }
}

/// Open `path` for reading, refusing anything but a regular file without blocking on it: the open
/// is non-blocking (a named pipe with no writer would otherwise wait forever) and the type is
/// checked on the opened file, so it cannot change in between.
pub fn open_regular(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::format(path, "is a folder; expected a file"));
    }
    if !meta.is_file() {
        refuse_special(path, "")?;
        return Err(Error::format(path, "is not a regular file"));
    }
    Ok(file)
}

/// The whole of a regular file, refused when it is larger than `max_bytes` (a bound that says
/// what the file can be: a model's JSON, a gene list) or than the memory available.
pub fn read_regular(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let mut f = open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max_bytes {
        return Err(Error::format(
            path,
            format!(
                "is {}, more than {what} can be (at most {})",
                human_bytes(len),
                human_bytes(max_bytes)
            ),
        ));
    }
    ensure_memory(len, || format!("{}: reading {what}", path.display()))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// The number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Threads beyond the CPUs are refused past this multiple of them: a compute-bound pool gains
/// nothing from more threads than cores, and tens of thousands of threads take minutes to start
/// and gigabytes of stacks.
pub const MAX_THREADS_PER_CPU: usize = 4;

/// The thread count to use for a `--threads` request (0: all CPUs): the request itself, or, when it
/// exceeds [`MAX_THREADS_PER_CPU`] times the CPUs, the number of CPUs with a warning to print.
pub fn cap_threads(requested: usize) -> (usize, Option<String>) {
    let n = cpus();
    if requested > n.saturating_mul(MAX_THREADS_PER_CPU) {
        (
            n,
            Some(format!(
                "--threads {requested} is more than {MAX_THREADS_PER_CPU} times this machine's \
                 {n} CPUs; using {n}"
            )),
        )
    } else {
        (requested, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_special_files() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert!(mem_available().is_some_and(|m| m > 0));
        assert!(ensure_memory(1 << 20, String::new).is_ok());
        let e = ensure_memory(u64::MAX, || "a lie".into()).unwrap_err();
        assert!(e.to_string().contains("a lie needs"), "{e}");
        assert!(free_disk(Path::new("/")).is_some());
        let e = ensure_disk(Path::new("/tmp/x"), u64::MAX, || "x".into()).unwrap_err();
        assert!(e.to_string().contains("disk space"), "{e}");
        assert_eq!(
            special_kind(Path::new("/dev/null")),
            Some("a character device")
        );
        let e = open_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero") && e.contains("character device"),
            "{e}"
        );
        assert!(open_regular(Path::new("/")).is_err());
        let (n, w) = cap_threads(1_000_000);
        assert_eq!(n, cpus());
        assert!(w.unwrap().contains("1000000"));
        assert_eq!(cap_threads(0), (0, None));
    }
}
