//! Host emulation of the kernels, for tests on machines without a GPU.
//!
//! The `.cu` files compiled by the host C++ compiler with `-DSCVI_EMU` (see kernels/common.cuh):
//! blocks run one after another, the threads of a block as cooperative fibers that switch at
//! `__syncthreads`, `__shared__` memory is static. Every kernel of the engine runs this way, so
//! the engine's orchestration (pointers, offsets, GEMM shapes, launch order) and the kernels'
//! arithmetic can be compared with the CPU reference where no GPU exists. It says nothing about
//! timing, occupancy, memory coalescing or races between blocks, and it is never used to train:
//! only [`super::device::Gpu::emulated`] creates it, and only builds with the `test-support`
//! feature (the test suite's) have it.
//!
//! Needs a C++17 compiler (`$CXX`, else `c++`); the library is built once per hash of the sources
//! and the shared constants (the same `-D` defines NVRTC gets) under the system's temporary
//! directory.

use super::dl::{self, Name};
use super::kernels::{define_options, fnv1a, struct_sizes, COMMON_CUH, KERNEL_FILES};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

/// An emulated kernel: takes a pointer to its argument struct.
type EmuKernel = unsafe extern "C" fn(*const c_void);
/// `scvi_emu_launch(kernel, args, grid xyz, block xyz, dynamic shared bytes) -> 0 on success`.
type EmuLaunch =
    unsafe extern "C" fn(EmuKernel, *const c_void, u32, u32, u32, u32, u32, u32, u64) -> c_int;

/// The loaded emulation library.
pub struct EmuLib {
    launch: EmuLaunch,
    size_of: unsafe extern "C" fn(*const c_char) -> u64,
    kernels: HashMap<&'static str, EmuKernel>,
}

// SAFETY: the library is loaded once and never unloaded; its functions are plain code pointers.
// The launcher itself is not reentrant: callers serialise launches through `lock()`.
unsafe impl Send for EmuLib {}
unsafe impl Sync for EmuLib {}

/// One lock for all emulated launches (the fiber scheduler uses process-wide state).
fn lock() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// Build (once per process and source hash) and load the emulation library.
pub fn library() -> Result<&'static EmuLib> {
    static LIB: OnceLock<std::result::Result<EmuLib, String>> = OnceLock::new();
    LIB.get_or_init(|| build_and_load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Cuda(e.clone()))
}

fn build_and_load() -> Result<EmuLib> {
    let defines = define_options().join(" ");
    let mut parts: Vec<&[u8]> = vec![COMMON_CUH.as_bytes(), defines.as_bytes()];
    for f in KERNEL_FILES {
        parts.push(f.source.as_bytes());
    }
    let hash = fnv1a(&parts);
    let dir = std::env::temp_dir().join(format!("scvi-rs-emu-{hash:016x}"));
    let so = dir.join("libscvi_emu.so");
    if !so.is_file() {
        build(&dir, &so)?;
    }
    load(&so)
}

fn build(dir: &Path, so: &Path) -> Result<()> {
    let err = |m: String| Error::Cuda(format!("kernel emulation: {m}"));
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|e| err(format!("{name}: {e}")))
    };
    write("common.cuh", COMMON_CUH)?;
    let mut main =
        String::from("#define SCVI_EMU 1\n#define SCVI_EMU_IMPL 1\n#include \"common.cuh\"\n");
    for f in KERNEL_FILES {
        write(f.name, f.source)?;
        main += &format!("#include \"{}\"\n", f.name);
    }
    // sizeof of each argument struct, to check the Rust mirrors (kernels::struct_sizes).
    main += "extern \"C\" unsigned long long scvi_emu_sizeof(const char* n) {\n";
    for (name, _) in struct_sizes() {
        main += &format!("    if (!std::strcmp(n, \"{name}\")) return sizeof({name});\n");
    }
    main += "    return 0;\n}\n";
    write("emu_main.cpp", &main)?;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let tmp = dir.join(format!("libscvi_emu.so.tmp{}", std::process::id()));
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-g", "-fPIC", "-shared", "-x", "c++"])
        .args(define_options())
        .arg(dir.join("emu_main.cpp"))
        .arg("-o")
        .arg(&tmp)
        .current_dir(dir)
        .output()
        .map_err(|e| err(format!("cannot run the C++ compiler '{cxx}': {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{cxx} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&tmp, so).map_err(|e| err(format!("{}: {e}", so.display())))
}

fn load(so: &Path) -> Result<EmuLib> {
    let err = |m: String| Error::Cuda(format!("kernel emulation: {m}"));
    let h = dl::open(Name::Path(so), false).map_err(err)?;
    // SAFETY: the symbols have exactly these signatures in kernels/common.cuh (SCVI_KERNEL and
    // scvi_emu_launch under SCVI_EMU), and scvi_emu_sizeof in the generated emu_main.cpp.
    unsafe {
        let launch: EmuLaunch = dl::function(&h, "scvi_emu_launch").map_err(err)?;
        let size_of: unsafe extern "C" fn(*const c_char) -> u64 =
            dl::function(&h, "scvi_emu_sizeof").map_err(err)?;
        let mut kernels = HashMap::new();
        for f in KERNEL_FILES {
            for &e in f.entries {
                let k: EmuKernel = dl::function(&h, e).map_err(err)?;
                kernels.insert(e, k);
            }
        }
        Ok(EmuLib {
            launch,
            size_of,
            kernels,
        })
    }
}

impl EmuLib {
    /// Run kernel `name` on its argument struct `args` over the grid, one block after another.
    pub fn launch<A>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &A,
    ) -> Result<()> {
        let k = self
            .kernels
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("kernel {name} is not emulated")))?;
        let _g = lock();
        // SAFETY: `A` is the #[repr(C)] mirror of the kernel's argument struct (the caller,
        // `Gpu::launch`, is typed by it), whose pointers address live host allocations of the
        // sizes the kernel uses for this grid.
        let r = unsafe {
            (self.launch)(
                *k,
                args as *const A as *const c_void,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                smem as u64,
            )
        };
        if r != 0 {
            return Err(Error::Cuda(format!(
                "emulated launch of {name} failed ({r})"
            )));
        }
        Ok(())
    }
}

/// The C++ compiler's `sizeof` of an argument struct (0 when unknown).
pub fn c_struct_size(name: &str) -> Result<usize> {
    let lib = library()?;
    let n = CString::new(name).map_err(|_| Error::Cuda("bad struct name".into()))?;
    // SAFETY: scvi_emu_sizeof only compares the NUL-terminated name with string literals.
    Ok(unsafe { (lib.size_of)(n.as_ptr()) } as usize)
}
