//! Where the CUDA libraries may be: the folders to search, in order ([`search_dirs`]), and the
//! library files found in them, ranked ([`candidates`]). Pure over a directory tree: nothing here
//! loads a library, so the tests lay out fake installations (toolkits, pip wheels, driver folders)
//! under a temporary root and check what would be tried first.
//!
//! The order, first to last:
//! 1. `SCVI_RS_CUDA_LIB_DIR` (`:`-separated): the user's own choice;
//! 2. the dynamic loader's own search by name (`libnvrtc.so.13`, `.so.12`, then `libnvrtc.so`),
//!    which covers `LD_LIBRARY_PATH` as it was at start-up and the `ldconfig` cache; the folders of
//!    `LD_LIBRARY_PATH` are also scanned, for majors the names do not cover;
//! 3. `$CUDA_HOME`, `$CUDA_PATH`, `$CUDA_ROOT` (`lib64`, `lib`, `targets/<arch>-linux/lib`);
//! 4. the toolkits: `/usr/local/cuda/lib64`, then `/usr/local/cuda-X.Y/lib64`, newest first;
//! 5. the driver's and the distribution's folders (`/usr/local/nvidia/lib64`,
//!    `/usr/lib/<arch>-linux-gnu`, `/usr/lib64`, `/usr/lib/wsl/lib`, ...);
//! 6. the `nvidia-*` pip wheels: `site-packages/nvidia/*/lib` (CUDA 12 wheels: `cuda_nvrtc/lib`,
//!    `cublas/lib`; CUDA 13 wheels: `cu13/lib`) of every Python environment in sight: `$VIRTUAL_ENV`,
//!    `$CONDA_PREFIX`, `$PYTHONPATH`, each folder on `$PATH` that holds a `python3`, `~/.local`,
//!    `/usr/lib/python3*`, `/usr/local/lib/python3*`, `/opt/*` and `/opt/*/.venv`.
//!
//! Among the files found, a major version newer than the driver's goes last (its CUBINs may not
//! load and cuBLAS would not start); otherwise the earlier source wins, and within one source the
//! newer major. A library found by absolute path brings its companions, loaded first by absolute
//! path: `libnvrtc-builtins.so.<major>.*` beside NVRTC (NVRTC opens it by name when it compiles,
//! and a wheel's `libnvrtc.so.13` carries no RUNPATH to find it) and `libcublasLt.so.<major>`
//! beside cuBLAS (which needs it at load time).

use super::Lib;
use std::cmp::Reverse;
use std::path::{Path, PathBuf};

/// The oldest CUDA major version whose NVRTC and cuBLAS scvi-rs loads.
pub const MIN_MAJOR: u32 = 12;

/// The majors tried by name through the loader's own search, newest first.
pub const MAJORS_BY_NAME: [u32; 2] = [13, 12];

/// Where a folder or a library came from, in the order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    EnvVar,
    Loader,
    CudaHome,
    Toolkit,
    System,
    PythonWheel,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::EnvVar => "SCVI_RS_CUDA_LIB_DIR",
            Source::Loader => "the loader's path",
            Source::CudaHome => "$CUDA_HOME",
            Source::Toolkit => "a CUDA toolkit",
            Source::System => "a system folder",
            Source::PythonWheel => "a Python nvidia-* wheel",
        }
    }
}

/// A folder to search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchDir {
    pub dir: PathBuf,
    pub source: Source,
}

/// How a candidate is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// This file, by absolute path.
    Path(PathBuf),
    /// This name, through the loader's own search.
    Soname(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Soname(s) => write!(f, "{s} (by name)"),
        }
    }
}

/// A library file that may be loaded, with the companions to load before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub target: Target,
    /// The CUDA major version its name says (None: the driver, or an unversioned name).
    pub major: Option<u32>,
    pub source: Source,
    pub preload: Vec<PathBuf>,
}

/// The folders to search, in order, without duplicates, only those that exist. `var` reads an
/// environment variable; the fixed system paths are taken under `root` (`/` in production).
pub fn search_dirs(var: &dyn Fn(&str) -> Option<String>, root: &Path) -> Vec<SearchDir> {
    let mut out: Vec<SearchDir> = Vec::new();
    let list = |name: &str| -> Vec<PathBuf> {
        var(name)
            .map(|v| {
                v.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let arch = std::env::consts::ARCH;
    let mut add = |dirs: Vec<PathBuf>, source: Source| {
        out.extend(dirs.into_iter().map(|dir| SearchDir { dir, source }));
    };

    add(list(super::LIB_DIR_ENV), Source::EnvVar);
    add(list("LD_LIBRARY_PATH"), Source::Loader);
    for v in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(home) = var(v).filter(|s| !s.is_empty()) {
            let home = PathBuf::from(home);
            add(
                vec![
                    home.join("lib64"),
                    home.join("lib"),
                    home.join(format!("targets/{arch}-linux/lib")),
                ],
                Source::CudaHome,
            );
        }
    }
    let mut toolkits = vec![at("/usr/local/cuda/lib64")];
    let mut versioned = subdirs(&at("/usr/local"), "cuda-");
    versioned.sort_by_key(|d| Reverse(version_key(d)));
    toolkits.extend(versioned.into_iter().map(|d| d.join("lib64")));
    add(toolkits, Source::Toolkit);
    add(
        [
            "/usr/local/nvidia/lib64".to_string(),
            "/usr/local/nvidia/lib".to_string(),
            format!("/usr/lib/{arch}-linux-gnu"),
            format!("/lib/{arch}-linux-gnu"),
            "/usr/lib64".to_string(),
            "/usr/lib".to_string(),
            "/usr/lib/wsl/lib".to_string(),
        ]
        .iter()
        .map(|p| at(p))
        .collect(),
        Source::System,
    );
    let wheels: Vec<PathBuf> = site_packages(var, root)
        .iter()
        .flat_map(|site| subdirs(&site.join("nvidia"), ""))
        .map(|d| d.join("lib"))
        .collect();
    add(wheels, Source::PythonWheel);

    let mut seen = std::collections::HashSet::new();
    out.retain(|d| d.dir.is_dir() && seen.insert(d.dir.canonicalize().unwrap_or(d.dir.clone())));
    out
}

/// The `site-packages` (and `dist-packages`) folders of the Python environments in sight.
fn site_packages(var: &dyn Fn(&str) -> Option<String>, root: &Path) -> Vec<PathBuf> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    // Prefixes whose lib/python3*/{site,dist}-packages to look in.
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for v in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(p) = var(v).filter(|s| !s.is_empty()) {
            prefixes.push(PathBuf::from(p));
        }
    }
    // A folder on PATH holding a python3 is a prefix's bin/ (a venv's, conda's, the system's).
    // The link is not followed: a venv's bin/python3 points to the interpreter it was made from,
    // while its packages are beside the link.
    for dir in var("PATH").unwrap_or_default().split(':') {
        let dir = Path::new(dir);
        if !dir.as_os_str().is_empty() && dir.join("python3").exists() {
            if let Some(prefix) = dir.parent() {
                prefixes.push(prefix.to_path_buf());
            }
        }
    }
    if let Some(home) = var("HOME").filter(|s| !s.is_empty()) {
        prefixes.push(Path::new(&home).join(".local"));
    }
    prefixes.push(at("/usr"));
    prefixes.push(at("/usr/local"));
    for opt in subdirs(&at("/opt"), "") {
        prefixes.push(opt.join(".venv"));
        prefixes.push(opt);
    }
    let mut sites: Vec<PathBuf> = var("PYTHONPATH")
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    for prefix in prefixes {
        for py in subdirs(&prefix.join("lib"), "python3") {
            sites.push(py.join("site-packages"));
            sites.push(py.join("dist-packages"));
        }
    }
    sites
}

/// The sub-folders of `dir` whose names start with `prefix`, sorted by name.
fn subdirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// `cuda-12.8` -> [12, 8], for sorting toolkits newest first.
fn version_key(dir: &Path) -> Vec<u32> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    name.as_deref()
        .and_then(|n| n.strip_prefix("cuda-"))
        .map(|v| v.split('.').map(|p| p.parse().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// The major version in a library file name `lib<stem>.so.<major>[.<minor>...]`: Some(None) for
/// the unversioned `lib<stem>.so`, None for another file.
fn major_of(file: &str, stem: &str) -> Option<Option<u32>> {
    let rest = file.strip_prefix(&format!("lib{stem}.so"))?;
    if rest.is_empty() {
        return Some(None);
    }
    let major = rest.strip_prefix('.')?.split('.').next()?.parse().ok()?;
    Some(Some(major))
}

/// What to load before `lib` found as `file` (major `major`) in `dir`.
pub fn companions(lib: Lib, dir: &Path, major: Option<u32>) -> Vec<PathBuf> {
    let Some(major) = major else {
        return Vec::new();
    };
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut v: Vec<PathBuf> = names
        .iter()
        .filter(|n| match lib {
            // NVRTC opens libnvrtc-builtins.so.<major>.<minor> of its own minor by name.
            Lib::Nvrtc => {
                !n.contains(".alt.")
                    && major_of(n, "nvrtc-builtins").is_some_and(|m| m == Some(major))
            }
            Lib::Cublas => *n == &format!("libcublasLt.so.{major}"),
            Lib::Driver => false,
        })
        .map(|n| dir.join(n))
        .collect();
    v.sort();
    v
}

/// The files in `dirs` that may be `lib`, and the names to try through the loader, ranked for a
/// driver of major version `driver_major` (None: no driver, e.g. compiling kernels on a machine
/// without a GPU).
pub fn candidates(lib: Lib, dirs: &[SearchDir], driver_major: Option<u32>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d.dir) else {
            continue;
        };
        let mut found: Vec<(String, Option<u32>)> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.contains(".alt."))
            .filter_map(|n| {
                let m = match lib {
                    Lib::Driver => (n == "libcuda.so.1").then_some(None),
                    _ => match major_of(&n, lib.stem())? {
                        Some(m) if m >= MIN_MAJOR => Some(Some(m)),
                        Some(_) => None,
                        // The unversioned development link: its target's name says the major.
                        None => Some(link_major(&d.dir.join(&n), lib.stem())),
                    },
                }?;
                Some((n, m))
            })
            .collect();
        // One file per major and folder: a versioned name before the unversioned link, the
        // shortest (the SONAME link, not the full version it points to). An unversioned link of
        // unknown major stays, ranked after the known ones.
        let unversioned = format!("lib{}.so", lib.stem());
        found.sort_by_key(|(n, m)| (*m, *n == unversioned, n.len()));
        found.dedup_by_key(|(_, m)| *m);
        for (name, major) in found {
            out.push(Candidate {
                target: Target::Path(d.dir.join(&name)),
                major,
                source: d.source,
                preload: companions(lib, &d.dir, major),
            });
        }
    }
    for name in by_name(lib) {
        let major = major_of(&name, lib.stem()).flatten();
        out.push(Candidate {
            target: Target::Soname(name),
            major,
            source: Source::Loader,
            preload: Vec::new(),
        });
    }
    rank(&mut out, driver_major);
    out
}

/// The names tried through the loader's own search.
fn by_name(lib: Lib) -> Vec<String> {
    match lib {
        Lib::Driver => vec!["libcuda.so.1".to_string()],
        _ => MAJORS_BY_NAME
            .iter()
            .map(|m| format!("lib{}.so.{m}", lib.stem()))
            .chain([format!("lib{}.so", lib.stem())])
            .collect(),
    }
}

/// The major of the file an unversioned link points to, if its name says it.
fn link_major(link: &Path, stem: &str) -> Option<u32> {
    let target = std::fs::read_link(link).ok()?;
    let name = target.file_name()?.to_string_lossy().into_owned();
    major_of(&name, stem).flatten()
}

/// Order candidates: too new for the driver last, then by source, then the newer major first
/// (an unknown major after the known ones); otherwise as found.
pub fn rank(c: &mut [Candidate], driver_major: Option<u32>) {
    let too_new =
        |m: Option<u32>| matches!((m, driver_major), (Some(m), Some(d)) if m > d && m >= MIN_MAJOR);
    c.sort_by_key(|k| {
        (
            too_new(k.major),
            k.source,
            k.major.is_none(),
            Reverse(k.major),
        )
    });
}
