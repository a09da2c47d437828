//! Loading libcuda, libnvrtc and libcublas at run time, of CUDA 12 or 13, from wherever they are,
//! and saying which files were loaded and from where (`scvi-rs doctor`).
//!
//! [`search`] lists the files that may be each library, ranked (`SCVI_RS_CUDA_LIB_DIR`, the
//! loader's own path, `$CUDA_HOME`, the toolkits, the system folders, the `nvidia-*` pip wheels
//! of any Python in sight); [`load`] opens the first that loads, by absolute path, after its
//! companions (`libnvrtc-builtins` beside NVRTC, `libcublasLt` beside cuBLAS), and checks that the
//! version it reports is the one its name says. Nothing panics: a library that cannot be found is
//! an [`Error::Cuda`] listing what was searched and tried, and how to fix it.
//!
//! NVRTC and cuBLAS are called through their own function tables looked up in the loaded file
//! (super::nvrtc, super::cublas): their C interfaces are the same in CUDA 12 and 13 for every
//! function scvi-rs uses, so one build runs with either. The driver is loaded here too (so that
//! its file and version can be reported, and a `libcuda.so.1` outside the loader's path can be
//! used), and cudarc, built with CUDA 12.8's driver bindings, then finds it by its `SONAME`:
//! every driver function cudarc calls for scvi-rs exists under the same name in 12.x and 13.x
//! drivers (docs/cuda.md lists them).

pub mod search;

use super::dl::{self, Name};
use crate::error::{Error, Result};
pub use search::{Candidate, SearchDir, Source, Target};
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The environment variable with extra library folders, searched first.
pub const LIB_DIR_ENV: &str = "SCVI_RS_CUDA_LIB_DIR";

/// One of the three libraries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lib {
    Driver,
    Nvrtc,
    Cublas,
}

impl Lib {
    pub const ALL: [Lib; 3] = [Lib::Driver, Lib::Nvrtc, Lib::Cublas];

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
                "install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc` (CUDA 13) or \
                 `nvidia-cuda-nvrtc-cu12` (CUDA 12), or put the folder holding libnvrtc.so.<major> \
                 in SCVI_RS_CUDA_LIB_DIR"
            }
            Lib::Cublas => {
                "install the CUDA toolkit, or `pip install nvidia-cublas` (CUDA 13) or \
                 `nvidia-cublas-cu12` (CUDA 12), or put the folder holding libcublas.so.<major> \
                 in SCVI_RS_CUDA_LIB_DIR"
            }
        }
    }
    /// A function every version of the library exports, to find its file and version.
    fn probe_symbol(self) -> &'static str {
        match self {
            Lib::Driver => "cuDriverGetVersion",
            Lib::Nvrtc => "nvrtcVersion",
            Lib::Cublas => "cublasGetProperty",
        }
    }
}

/// A library loaded: the file, where it was found, the version it reports, and the companions
/// loaded before it.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub lib: Lib,
    pub file: PathBuf,
    pub source: Source,
    /// (major, minor) as the library reports it: the driver's CUDA version, NVRTC's, cuBLAS's.
    pub version: (i32, i32),
    pub preloaded: Vec<PathBuf>,
    handle: dl::Handle,
}

impl Loaded {
    /// The handle to look functions up in.
    pub fn handle(&self) -> &dl::Handle {
        &self.handle
    }

    /// One line for `doctor`: file, folder, where it came from, version, companions.
    pub fn describe(&self) -> String {
        let name = self.file.file_name().map(|n| n.to_string_lossy());
        let dir = self.file.parent().unwrap_or(Path::new(""));
        let mut s = format!(
            "{} from {} ({}), {} {}.{}",
            name.unwrap_or_default(),
            dir.display(),
            self.source.describe(),
            match self.lib {
                Lib::Driver => "driver for CUDA",
                Lib::Nvrtc => "NVRTC",
                Lib::Cublas => "cuBLAS",
            },
            self.version.0,
            self.version.1
        );
        if !self.preloaded.is_empty() {
            let names: Vec<String> = self
                .preloaded
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            s += &format!("; loaded first: {}", names.join(", "));
        }
        s
    }
}

/// The folders searched on this machine, in order.
pub fn search_dirs() -> &'static [SearchDir] {
    static DIRS: OnceLock<Vec<SearchDir>> = OnceLock::new();
    DIRS.get_or_init(|| search::search_dirs(&|v| std::env::var(v).ok(), Path::new("/")))
}

/// `lib`, loaded once per process (the first candidate that loads), or why it cannot be.
pub fn load(lib: Lib) -> Result<&'static Loaded> {
    static SLOTS: [OnceLock<std::result::Result<Loaded, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = &SLOTS[lib as usize];
    slot.get_or_init(|| try_load(lib))
        .as_ref()
        .map_err(|m| Error::Cuda(m.clone()))
}

/// The function table of `lib` (see `dl::fn_table!`), looked up once in the loaded library and
/// kept in `slot`.
///
/// # Safety
/// `load` must look up functions whose declared signatures are `lib`'s own.
pub unsafe fn functions<T: Sync>(
    lib: Lib,
    slot: &'static OnceLock<std::result::Result<T, String>>,
    load: unsafe fn(&dl::Handle) -> std::result::Result<T, String>,
) -> Result<&'static T> {
    let loaded = self::load(lib)?;
    slot.get_or_init(|| {
        load(loaded.handle()).map_err(|e| format!("{}: {e}", loaded.file.display()))
    })
    .as_ref()
    .map_err(|e| Error::Cuda(e.clone()))
}

/// `Ok` when `lib` loads, else [`Error::Cuda`] saying what was searched and what to do.
pub fn require(lib: Lib) -> Result<()> {
    load(lib).map(|_| ())
}

/// The driver's CUDA version (e.g. (13, 0)), when a driver loads.
pub fn driver_version() -> Option<(i32, i32)> {
    load(Lib::Driver).ok().map(|l| l.version)
}

/// Every library's status, for `scvi-rs doctor`.
pub fn report() -> Vec<(Lib, Result<&'static Loaded>)> {
    Lib::ALL.into_iter().map(|l| (l, load(l))).collect()
}

fn try_load(lib: Lib) -> std::result::Result<Loaded, String> {
    let driver_major = match lib {
        Lib::Driver => None,
        _ => driver_version().map(|v| v.0 as u32),
    };
    let dirs = search_dirs();
    let cands = search::candidates(lib, dirs, driver_major);
    let mut failed = Vec::new();
    for c in &cands {
        match open(lib, c) {
            Ok(l) => return Ok(l),
            Err(e) => failed.push((c, e)),
        }
    }
    Err(not_found(lib, dirs, &failed))
}

/// Load one candidate: its companions first, then the file, then check its version.
fn open(lib: Lib, c: &Candidate) -> std::result::Result<Loaded, String> {
    let mut preloaded: Vec<PathBuf> = c
        .preload
        .iter()
        .filter(|p| dl::open(Name::Path(p), true).is_ok())
        .cloned()
        .collect();
    let handle = match &c.target {
        Target::Path(p) => dl::open(Name::Path(p), true)?,
        Target::Soname(s) => dl::open(Name::Soname(s), true)?,
    };
    let version = probe_version(lib, &handle)?;
    if let Some(m) = c.major {
        if version.0 as u32 != m {
            return Err(format!(
                "its name says CUDA {m}, but it reports version {}.{}",
                version.0, version.1
            ));
        }
    }
    let file = handle
        .file(lib.probe_symbol())
        .unwrap_or_else(|| match &c.target {
            Target::Path(p) => p.clone(),
            Target::Soname(s) => PathBuf::from(s),
        });
    // Found by name: NVRTC's builtins may still be outside the loader's path (a folder put in
    // LD_LIBRARY_PATH holds both, but a library found through the ldconfig cache may not).
    if matches!(c.target, Target::Soname(_)) {
        if let Some(dir) = file.parent() {
            for p in search::companions(lib, dir, Some(version.0 as u32)) {
                if dl::open(Name::Path(&p), true).is_ok() {
                    preloaded.push(p);
                }
            }
        }
    }
    Ok(Loaded {
        lib,
        file,
        source: c.source,
        version,
        preloaded,
        handle,
    })
}

/// The (major, minor) version the loaded library reports.
fn probe_version(lib: Lib, h: &dl::Handle) -> std::result::Result<(i32, i32), String> {
    let name = lib.probe_symbol();
    // SAFETY: each signature below is the library's own declaration of that function, the same in
    // CUDA 12 and 13: `CUresult cuDriverGetVersion(int*)`, `nvrtcResult nvrtcVersion(int*, int*)`,
    // `cublasStatus_t cublasGetProperty(libraryPropertyType, int*)`; the out-pointers are valid.
    unsafe {
        match lib {
            Lib::Driver => {
                let f: unsafe extern "C" fn(*mut c_int) -> c_int = dl::function(h, name)?;
                let mut v: c_int = 0;
                status(f(&mut v), name)?;
                Ok((v / 1000, (v % 1000) / 10))
            }
            Lib::Nvrtc => {
                let f: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int =
                    dl::function(h, name)?;
                let (mut a, mut b): (c_int, c_int) = (0, 0);
                status(f(&mut a, &mut b), name)?;
                Ok((a, b))
            }
            Lib::Cublas => {
                let f: unsafe extern "C" fn(c_int, *mut c_int) -> c_int = dl::function(h, name)?;
                // libraryPropertyType: MAJOR_VERSION = 0, MINOR_VERSION = 1.
                let (mut a, mut b): (c_int, c_int) = (0, 0);
                status(f(0, &mut a), name)?;
                status(f(1, &mut b), name)?;
                Ok((a, b))
            }
        }
    }
}

fn status(code: c_int, what: &str) -> std::result::Result<(), String> {
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{what} returned {code}"))
    }
}

/// The error for a library that could not be loaded: where it was looked for, what was found and
/// why that failed, and how to fix it.
fn not_found(lib: Lib, dirs: &[SearchDir], failed: &[(&Candidate, String)]) -> String {
    let names: Vec<String> = failed
        .iter()
        .filter_map(|(c, _)| match &c.target {
            Target::Soname(s) => Some(s.clone()),
            Target::Path(_) => None,
        })
        .collect();
    let mut msg = format!(
        "{} could not be loaded (searched the loader's path for {}",
        lib.what(),
        names.join(", ")
    );
    if dirs.is_empty() {
        msg += "; no other CUDA folder exists here";
    } else {
        let shown: Vec<String> = dirs
            .iter()
            .take(12)
            .map(|d| d.dir.display().to_string())
            .collect();
        msg += &format!(", and {}", shown.join(", "));
        if dirs.len() > shown.len() {
            msg += &format!(" and {} more folders", dirs.len() - shown.len());
        }
    }
    msg += ")";
    for (c, e) in failed {
        if let Target::Path(p) = &c.target {
            msg += &format!("; found {} but it did not load: {e}", p.display());
        }
    }
    if lib != Lib::Driver {
        if let Some((a, b)) = driver_version() {
            msg += &format!("; the driver is for CUDA {a}.{b}");
        }
    }
    msg += &format!("; {}", lib.fix());
    msg
}
