//! Finding libcuda, libnvrtc and libcublas at run time, without panicking.
//!
//! cudarc (feature `dynamic-loading`, version feature `cuda-12080`) opens each library by name with
//! `dlopen` the first time one of its functions is called, trying `libnvrtc.so`, `libnvrtc.so.12`,
//! `.so.11`, ... (`cudarc::get_lib_name_candidates`), and **panics** when none loads. So before
//! anything touches cudarc we ask it whether the library is there (`is_culib_present`) and turn
//! a "no" into [`Error::Cuda`] with what was searched and how to fix it.
//!
//! Two ways to point scvi-rs at a library outside the loader's path:
//! - `LD_LIBRARY_PATH`, set before the process starts (glibc reads it once, at start-up);
//! - `SCVI_RS_CUDA_LIB_DIR`, a `:`-separated list of directories read at run time: a
//!   `libnvrtc.so.12` / `libcublas.so.12` / `libcublasLt.so.12` found there (or under
//!   `$CUDA_HOME/lib64`, `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`) is loaded by absolute path
//!   first; glibc then hands cudarc that same library when it asks for `libnvrtc.so.12`, because a
//!   loaded library answers to its `SONAME`.
//!
//! CUDA 13 installs name their libraries `libnvrtc.so.13`, which this build's name list does not
//! contain; they are found through the unversioned development link (`libnvrtc.so`, present in a
//! toolkit's `lib64`) on the loader's path. When only a `.so.13` can be found, the error says so.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Once;

/// The environment variable with extra library directories.
pub const LIB_DIR_ENV: &str = "SCVI_RS_CUDA_LIB_DIR";

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlerror() -> *const c_char;
}
const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// One of the three libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    Driver,
    Nvrtc,
    Cublas,
}

impl Lib {
    pub fn stem(self) -> &'static str {
        match self {
            Lib::Driver => "cuda",
            Lib::Nvrtc => "nvrtc",
            Lib::Cublas => "cublas",
        }
    }
    pub fn what(self) -> &'static str {
        match self {
            Lib::Driver => "the CUDA driver (libcuda)",
            Lib::Nvrtc => "NVRTC, the run-time CUDA compiler (libnvrtc)",
            Lib::Cublas => "cuBLAS (libcublas)",
        }
    }
    fn fix(self) -> &'static str {
        match self {
            Lib::Driver => {
                "install the NVIDIA driver (it provides libcuda.so.1), or train with --device cpu"
            }
            Lib::Nvrtc => {
                "install the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12`, then put the \
                 directory holding libnvrtc.so.12 in SCVI_RS_CUDA_LIB_DIR (or LD_LIBRARY_PATH)"
            }
            Lib::Cublas => {
                "install the CUDA toolkit or `pip install nvidia-cublas-cu12`, then put the \
                 directory holding libcublas.so.12 in SCVI_RS_CUDA_LIB_DIR (or LD_LIBRARY_PATH)"
            }
        }
    }
}

/// Directories searched beyond the loader's own path, in order.
pub fn extra_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var(LIB_DIR_ENV) {
        dirs.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(v) = std::env::var(var) {
            dirs.push(Path::new(&v).join("lib64"));
            dirs.push(Path::new(&v).join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

fn dl_open_global(path: &Path) -> std::result::Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path; dlopen has no other preconditions. The handle is
    // deliberately never closed: the library stays loaded for cudarc to find by its SONAME.
    let h = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated message owned by libc.
        let msg = unsafe {
            let e = dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(msg);
    }
    Ok(())
}

/// Load by absolute path the CUDA 12 libraries found in [`extra_dirs`], once per process.
pub fn preload() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for dir in extra_dirs() {
            // cublasLt first: libcublas needs it, and it may not be on the loader's path.
            for name in ["libnvrtc.so.12", "libcublasLt.so.12", "libcublas.so.12"] {
                let p = dir.join(name);
                if p.is_file() {
                    let _ = dl_open_global(&p);
                }
            }
        }
    });
}

/// Whether cudarc can load `lib` (after [`preload`]).
pub fn is_present(lib: Lib) -> bool {
    preload();
    // SAFETY: these only try `dlopen` on cudarc's candidate names and close what they open.
    unsafe {
        match lib {
            Lib::Driver => cudarc::driver::sys::is_culib_present(),
            Lib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
            Lib::Cublas => cudarc::cublas::sys::is_culib_present(),
        }
    }
}

/// The names cudarc tries for `lib` (for messages).
pub fn candidate_names(lib: Lib) -> Vec<String> {
    let mut v = cudarc::get_lib_name_candidates(lib.stem());
    if lib == Lib::Driver {
        v.retain(|n| n.starts_with("libcuda"));
    }
    v.retain(|n| !n.contains("64"));
    let mut seen = std::collections::HashSet::new();
    v.retain(|n| seen.insert(n.clone()));
    v
}

/// Files of a CUDA version this build cannot load by name (e.g. `libnvrtc.so.13`) in the usual
/// places, for the error message.
fn other_versions(lib: Lib) -> Vec<PathBuf> {
    let mut dirs = extra_dirs();
    if let Ok(v) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    dirs.extend(
        ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
            .iter()
            .map(PathBuf::from),
    );
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("cuda") {
                dirs.push(e.path().join("lib64"));
            }
        }
    }
    let prefix = format!("lib{}.so.", lib.stem());
    let mut found = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = n.strip_prefix(&prefix) {
                let major = v.split('.').next().unwrap_or("");
                if major.parse::<u32>().map(|m| m >= 13).unwrap_or(false) {
                    found.push(e.path());
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `Ok` when cudarc can load `lib`, else [`Error::Cuda`] saying what was searched and what to do.
pub fn require(lib: Lib) -> Result<()> {
    if is_present(lib) {
        return Ok(());
    }
    let mut msg = format!(
        "{} could not be loaded (searched the loader's path for {}",
        lib.what(),
        candidate_names(lib).join(", ")
    );
    let dirs = extra_dirs();
    if !dirs.is_empty() {
        msg += &format!(
            ", and {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    msg += ")";
    let other = other_versions(lib);
    if !other.is_empty() {
        msg += &format!(
            "; found {}, a CUDA version this build does not load by name: put a directory with \
             the unversioned lib{}.so link (a CUDA toolkit's lib64 has one) on LD_LIBRARY_PATH",
            other[0].display(),
            lib.stem()
        );
    }
    msg += &format!("; {}", lib.fix());
    Err(Error::Cuda(msg))
}

/// Every library's status, for `scvi-rs doctor`: (library, loaded, detail).
pub fn report() -> Vec<(Lib, bool, String)> {
    [Lib::Driver, Lib::Nvrtc, Lib::Cublas]
        .into_iter()
        .map(|l| match require(l) {
            Ok(()) => (l, true, "loads".to_string()),
            Err(Error::Cuda(m)) => (l, false, m),
            Err(e) => (l, false, e.to_string()),
        })
        .collect()
}
