//! The run-time compilation of the kernel sources ([`super::kernels`]) with NVRTC for one GPU
//! architecture, cached in memory per (architecture, source hash) and on disk
//! (`$SCVI_RS_KERNEL_CACHE`, else `$XDG_CACHE_HOME/scvi-rs/kernels`, else
//! `~/.cache/scvi-rs/kernels`; a cache that cannot be written is skipped silently).
//!
//! Each `.cu` file includes `common.cuh`; NVRTC gets the header as an in-memory include, so no file
//! system path is needed. A GPU's own architecture (`sm_90` for an H100) gives a CUBIN, loaded
//! without the driver's PTX JIT (which refuses PTX from an NVRTC newer than the driver); an
//! architecture newer than this NVRTC knows gets PTX for the newest one it knows, for the driver to
//! JIT.
//!
//! NVRTC is called through its own function table ([`Api`]), looked up in the library
//! [`super::libs`] loaded (CUDA 12's `libnvrtc.so.12` or CUDA 13's `libnvrtc.so.13`: the functions
//! used here have the same signatures in both). Result codes stay plain integers, named by
//! `nvrtcGetErrorString`, so a code one version adds is reported, never misread.

use super::dl::fn_table;
use super::kernels::{define_options, fnv1a, KernelFile, COMMON_CUH};
use super::libs::{self, Lib};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// `nvrtcProgram`.
type Program = *mut c_void;

fn_table! {
    /// The NVRTC functions scvi-rs calls, as `nvrtc.h` declares them (CUDA 12 and 13 alike).
    struct Api {
        version: "nvrtcVersion" => fn(*mut c_int, *mut c_int) -> c_int,
        num_supported_archs: "nvrtcGetNumSupportedArchs" => fn(*mut c_int) -> c_int,
        supported_archs: "nvrtcGetSupportedArchs" => fn(*mut c_int) -> c_int,
        create_program: "nvrtcCreateProgram" => fn(
            *mut Program, *const c_char, *const c_char, c_int, *const *const c_char,
            *const *const c_char
        ) -> c_int,
        destroy_program: "nvrtcDestroyProgram" => fn(*mut Program) -> c_int,
        compile_program: "nvrtcCompileProgram" => fn(Program, c_int, *const *const c_char) -> c_int,
        cubin_size: "nvrtcGetCUBINSize" => fn(Program, *mut usize) -> c_int,
        cubin: "nvrtcGetCUBIN" => fn(Program, *mut c_char) -> c_int,
        ptx_size: "nvrtcGetPTXSize" => fn(Program, *mut usize) -> c_int,
        ptx: "nvrtcGetPTX" => fn(Program, *mut c_char) -> c_int,
        log_size: "nvrtcGetProgramLogSize" => fn(Program, *mut usize) -> c_int,
        log: "nvrtcGetProgramLog" => fn(Program, *mut c_char) -> c_int,
        error_string: "nvrtcGetErrorString" => fn(c_int) -> *const c_char,
    }
}

/// The loaded NVRTC's functions.
fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    // SAFETY: the table's signatures are nvrtc.h's.
    unsafe { libs::functions(Lib::Nvrtc, &API, Api::load) }
}

/// What NVRTC produced: a CUBIN for a real architecture or PTX for a virtual one.
#[derive(Clone, Debug)]
pub enum Image {
    Cubin(Vec<u8>),
    Ptx(String),
}

impl Image {
    pub fn len(&self) -> usize {
        match self {
            Image::Cubin(b) => b.len(),
            Image::Ptx(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// NVRTC's version, e.g. (12, 9).
pub fn version() -> Result<(i32, i32)> {
    let nv = api()?;
    let (mut a, mut b): (c_int, c_int) = (0, 0);
    // SAFETY: the out-pointers are valid.
    check(unsafe { (nv.version)(&mut a, &mut b) }, "nvrtcVersion")?;
    Ok((a, b))
}

/// The real architectures this NVRTC can compile for (e.g. [50, 52, ..., 90, 100, 120]).
pub fn supported_archs() -> Result<Vec<i32>> {
    let nv = api()?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer.
    check(
        unsafe { (nv.num_supported_archs)(&mut n) },
        "nvrtcGetNumSupportedArchs",
    )?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `v` has room for the `n` entries NVRTC writes.
    check(
        unsafe { (nv.supported_archs)(v.as_mut_ptr()) },
        "nvrtcGetSupportedArchs",
    )?;
    Ok(v)
}

/// `Ok` for NVRTC_SUCCESS (0), else the call and the code's name.
fn check(r: c_int, what: &str) -> Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{what} failed: {}", code_name(r))))
    }
}

/// `NVRTC_ERROR_COMPILATION (6)`.
fn code_name(r: c_int) -> String {
    let name = api().ok().and_then(|nv| {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code.
        let p = unsafe { (nv.error_string)(r) };
        // SAFETY: as above; copied at once.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    });
    format!("{} ({r})", name.unwrap_or_else(|| "NVRTC error".into()))
}

/// The `--gpu-architecture` for a device of compute capability `cc` (e.g. 90): its own `sm_XX`
/// when NVRTC knows it, else `compute_YY` for the newest YY <= XX that NVRTC knows.
pub fn arch_for(cc: i32) -> Result<String> {
    let archs = supported_archs()?;
    if archs.contains(&cc) {
        return Ok(format!("sm_{cc}"));
    }
    archs
        .iter()
        .copied()
        .filter(|&a| a <= cc)
        .max()
        .map(|a| format!("compute_{a}"))
        .ok_or_else(|| {
            Error::Cuda(format!(
                "this NVRTC cannot compile for compute capability {}.{} (it knows {:?})",
                cc / 10,
                cc % 10,
                archs
            ))
        })
}

/// Options every compile uses. Full-precision division and square roots (the defaults), no fast
/// math: the kernels are checked against the CPU reference at f32 rounding. The constants shared
/// with Rust come as `-D` defines ([`super::kernels::defines`]).
fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
    ];
    o.extend(define_options());
    o
}

type CacheKey = (String, u64);
fn memory_cache() -> &'static Mutex<HashMap<CacheKey, Arc<Image>>> {
    static C: OnceLock<Mutex<HashMap<CacheKey, Arc<Image>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn disk_cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("SCVI_RS_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("scvi-rs/kernels"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".cache/scvi-rs/kernels"))
}

/// Compile `file` for `arch` (e.g. "sm_90"), through the caches.
pub fn compile_cached(file: &KernelFile, arch: &str) -> Result<Arc<Image>> {
    let ver = version()?;
    let opts = options(arch);
    let hash = fnv1a(&[
        file.source.as_bytes(),
        COMMON_CUH.as_bytes(),
        opts.join(" ").as_bytes(),
        format!("nvrtc {}.{}", ver.0, ver.1).as_bytes(),
    ]);
    let key = (arch.to_string(), hash);
    if let Some(img) = memory_cache()
        .lock()
        .ok()
        .and_then(|c| c.get(&key).cloned())
    {
        return Ok(img);
    }
    let real = arch.starts_with("sm_");
    let stem = file.name.trim_end_matches(".cu");
    let disk = disk_cache_dir().map(|d| {
        d.join(format!(
            "{stem}-{arch}-{hash:016x}.{}",
            if real { "cubin" } else { "ptx" }
        ))
    });
    let cached = disk
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| {
            if b.is_empty() {
                None
            } else if real {
                Some(Image::Cubin(b))
            } else {
                String::from_utf8(b).ok().map(Image::Ptx)
            }
        });
    let img = Arc::new(match cached {
        Some(i) => i,
        None => {
            let i = compile(file, arch)?;
            if let Some(p) = &disk {
                let bytes: &[u8] = match &i {
                    Image::Cubin(b) => b,
                    Image::Ptx(s) => s.as_bytes(),
                };
                // A cache: a failed write only costs a compile next time.
                if let Some(dir) = p.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = crate::atomic::replace_file(p, bytes);
            }
            i
        }
    });
    if let Ok(mut c) = memory_cache().lock() {
        c.insert(key, img.clone());
    }
    Ok(img)
}

/// Compile `file` for `arch` with NVRTC, no caching: a CUBIN for `sm_XX`, PTX for `compute_XX`.
/// A compile error comes back as [`Error::Cuda`] with NVRTC's log.
pub fn compile(file: &KernelFile, arch: &str) -> Result<Image> {
    let nv = api()?;
    let src = CString::new(file.source)
        .map_err(|_| Error::Cuda(format!("{}: source contains a NUL byte", file.name)))?;
    let name = CString::new(file.name).map_err(|_| Error::Cuda("bad kernel name".into()))?;
    let hdr = CString::new(COMMON_CUH).map_err(|_| Error::Cuda("common.cuh: NUL byte".into()))?;
    let hdr_name = CString::new("common.cuh").map_err(|_| Error::Cuda("bad header".into()))?;
    let headers = [hdr.as_ptr()];
    let header_names = [hdr_name.as_ptr()];
    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the program (destroyed below); the header
    // arrays have the one entry announced.
    check(
        unsafe {
            (nv.create_program)(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                1,
                headers.as_ptr(),
                header_names.as_ptr(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let result = compile_program(nv, prog, file, arch);
    // SAFETY: `prog` was created above and is destroyed once.
    unsafe {
        let _ = (nv.destroy_program)(&mut prog);
    }
    result
}

fn compile_program(nv: &Api, prog: Program, file: &KernelFile, arch: &str) -> Result<Image> {
    let opts: Vec<CString> = options(arch)
        .into_iter()
        .map(|o| CString::new(o).unwrap_or_default())
        .collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `prog` is live; `ptrs` holds `ptrs.len()` NUL-terminated options that outlive the call.
    let r = unsafe { (nv.compile_program)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
    if r != 0 {
        let log = program_log(nv, prog).unwrap_or_default();
        return Err(Error::Cuda(format!(
            "kernel {} failed to compile for {arch} ({}):\n{}",
            file.name,
            code_name(r),
            log.trim_end()
        )));
    }
    if arch.starts_with("sm_") {
        // SAFETY: `prog` compiled; the out-pointers are valid and the buffer has the announced size.
        let bytes = program_output(
            ["nvrtcGetCUBINSize", "nvrtcGetCUBIN"],
            |n| unsafe { (nv.cubin_size)(prog, n) },
            |p| unsafe { (nv.cubin)(prog, p) },
        )?;
        Ok(Image::Cubin(bytes))
    } else {
        // SAFETY: as above, for the PTX text (NUL-terminated, the size includes the NUL).
        let mut bytes = program_output(
            ["nvrtcGetPTXSize", "nvrtcGetPTX"],
            |n| unsafe { (nv.ptx_size)(prog, n) },
            |p| unsafe { (nv.ptx)(prog, p) },
        )?;
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        String::from_utf8(bytes)
            .map(Image::Ptx)
            .map_err(|_| Error::Cuda("NVRTC returned PTX that is not UTF-8".into()))
    }
}

/// One of a program's outputs (CUBIN, PTX, the log): its size from `size`, then its bytes from
/// `get` into a buffer of that size; `what` names the two calls for errors.
fn program_output(
    what: [&str; 2],
    size: impl FnOnce(&mut usize) -> c_int,
    get: impl FnOnce(*mut c_char) -> c_int,
) -> Result<Vec<u8>> {
    let mut n: usize = 0;
    check(size(&mut n), what[0])?;
    let mut buf = vec![0u8; n.max(1)];
    check(get(buf.as_mut_ptr() as *mut c_char), what[1])?;
    buf.truncate(n);
    Ok(buf)
}

fn program_log(nv: &Api, prog: Program) -> Option<String> {
    // SAFETY: `prog` is live; the out-pointers are valid and the buffer has the announced size.
    let log = program_output(
        ["nvrtcGetProgramLogSize", "nvrtcGetProgramLog"],
        |n| unsafe { (nv.log_size)(prog, n) },
        |p| unsafe { (nv.log)(prog, p) },
    )
    .ok()?;
    Some(
        CStr::from_bytes_until_nul(&log)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}
