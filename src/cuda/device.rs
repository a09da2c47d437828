//! The device the engine talks to: a CUDA GPU through cudarc (driver API, NVRTC-compiled modules,
//! cuBLAS), or, in builds with the `test-support` feature, the host emulation of the same kernels
//! (`super::emu`), whose memory is plain host memory. Memory is addressed by raw device pointers
//! ([`DevPtr`]), owned by [`DevBuf`]s; every kernel takes one `#[repr(C)]` argument struct
//! ([`super::kernels`]). All work goes to one stream, in order.

use super::cublas::Blas;
pub use super::cublas::Sgemm;
use super::kernels::{DevPtr, KERNEL_FILES};
use super::libs::{self, Lib};
use super::nvrtc::{self, Image};
use crate::error::{Error, Result};
use cudarc::driver::{
    result as dr, sys as ds, CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

const MIB: f64 = 1024.0 * 1024.0;

/// What a device is: for `scvi-rs doctor` and messages.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub total_mem: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{}: {}, {:.1} GiB, compute capability {}.{}, {} multiprocessors",
            self.index,
            self.name,
            self.total_mem as f64 / (1024.0 * MIB),
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors
        )
    }
}

fn drv(e: dr::DriverError, what: &str) -> Error {
    let s = e
        .error_string()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    Error::Cuda(format!("{what}: {:?} ({s})", e.0))
}

/// Run `f`, turning a panic inside cudarc (a library or symbol it could not load) into an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let m = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Error::Cuda(format!("{what}: {m}")))
    })
}

/// The number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize> {
    libs::require(Lib::Driver)?;
    no_panic("the CUDA driver", || {
        dr::init().map_err(|e| drv(e, "no usable CUDA GPU (cuInit failed)"))?;
        let n = dr::device::get_count().map_err(|e| drv(e, "cuDeviceGetCount"))?;
        Ok(n.max(0) as usize)
    })
}

/// Name, memory and compute capability of device `index`, without creating a context.
pub fn device_info(index: usize) -> Result<DeviceInfo> {
    let n = device_count()?;
    if index >= n {
        return Err(no_such_device(index, n));
    }
    no_panic("the CUDA driver", || {
        let d = dr::device::get(index as i32).map_err(|e| drv(e, "cuDeviceGet"))?;
        let attr = |a: ds::CUdevice_attribute| {
            // SAFETY: `d` is a valid device handle from cuDeviceGet.
            unsafe { dr::device::get_attribute(d, a) }.map_err(|e| drv(e, "cuDeviceGetAttribute"))
        };
        use ds::CUdevice_attribute::*;
        Ok(DeviceInfo {
            index,
            name: dr::device::get_name(d).map_err(|e| drv(e, "cuDeviceGetName"))?,
            // SAFETY: as above.
            total_mem: unsafe { dr::device::total_mem(d) }
                .map_err(|e| drv(e, "cuDeviceTotalMem"))?,
            compute_capability: (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            multiprocessors: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        })
    })
}

fn no_such_device(index: usize, n: usize) -> Error {
    let have = if n == 0 {
        "this machine has no CUDA device".to_string()
    } else {
        let names: Vec<String> = (0..n)
            .map(|i| {
                dr::device::get(i as i32)
                    .and_then(dr::device::get_name)
                    .map(|s| format!("cuda:{i} ({s})"))
                    .unwrap_or_else(|_| format!("cuda:{i}"))
            })
            .collect();
        format!(
            "this machine has {n} CUDA device{}: {}",
            if n == 1 { "" } else { "s" },
            names.join(", ")
        )
    };
    Error::Cuda(format!("device cuda:{index} does not exist: {have}"))
}

/// A launch: grid, block (x, y, z) and dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Launch {
    pub fn new(grid: u32, block: u32) -> Launch {
        Launch {
            grid: (grid.max(1), 1, 1),
            block: (block, 1, 1),
            smem: 0,
        }
    }
    /// Enough blocks of `block` threads for `n` threads.
    pub fn cover(n: usize, block: u32) -> Launch {
        Launch::new(n.div_ceil(block as usize) as u32, block)
    }
}

struct CudaDev {
    // Dropped first: the handle goes before the stream it is bound to.
    blas: Blas,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    arch: String,
}

/// The emulation library, in builds that have it; elsewhere a type with no value, so that the
/// emulated paths below are compiled and type-checked but can never run.
#[cfg(feature = "test-support")]
type EmuLib = &'static super::emu::EmuLib;
#[cfg(not(feature = "test-support"))]
#[derive(Clone, Copy)]
enum EmuLib {}

enum Backend {
    Cuda(Box<CudaDev>),
    #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
    Emu(EmuLib, Faults),
}

/// Device faults planted in the emulation, so that the tests can check that a fault is an error
/// wherever it surfaces. A fault behaves as CUDA's sticky errors do (an illegal address, say):
/// launches keep being accepted, the next synchronisation (a `sync`, a download) reports it, and
/// every later call fails too.
struct Faults {
    /// Synchronisations left before the fault surfaces (`u64::MAX`: none planted).
    syncs_left: std::sync::atomic::AtomicU64,
    tripped: std::sync::atomic::AtomicBool,
}

/// No fault planted.
impl Default for Faults {
    fn default() -> Faults {
        Faults {
            syncs_left: std::sync::atomic::AtomicU64::new(u64::MAX),
            tripped: Default::default(),
        }
    }
}

impl Faults {
    fn error(what: &str) -> Error {
        Error::Cuda(format!(
            "{what}: CUDA_ERROR_ILLEGAL_ADDRESS (a device fault planted by the test)"
        ))
    }

    /// A synchronisation: fails once the planted count is used up, and from then on.
    fn at_sync(&self, what: &str) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.tripped.load(SeqCst) {
            return Err(Self::error(what));
        }
        let left = self.syncs_left.load(SeqCst);
        if left == u64::MAX {
            return Ok(());
        }
        if left == 0 {
            self.tripped.store(true, SeqCst);
            return Err(Self::error(what));
        }
        self.syncs_left.store(left - 1, SeqCst);
        Ok(())
    }

    /// Any other call: fails once the fault has surfaced.
    fn after_fault(&self, what: &str) -> Result<()> {
        if self.tripped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Self::error(what));
        }
        Ok(())
    }
}

/// A device with its compiled kernels.
pub struct Gpu {
    backend: Backend,
    pub info: DeviceInfo,
    tally: Tally,
}

/// What a [`Gpu`] has been asked to do since it was opened (a snapshot of [`Gpu::counts`]):
/// the figures the step floor of docs/cuda.md is counted from, and what the tests hold the step
/// loop to (how many launches, products and synchronisations a step makes). Counted on the host
/// as the calls are made, so the emulation counts exactly what a device would be sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Kernel launches and memsets (each a stream operation with its own launch cost).
    pub launches: u64,
    /// cuBLAS sgemm calls, and their arithmetic, `2 m n k` each.
    pub gemms: u64,
    pub gemm_flops: u64,
    /// Host waits for the device: [`Gpu::sync`], and each download (which waits).
    pub syncs: u64,
    /// Bytes copied host to device and device to host.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            launches: self.launches - earlier.launches,
            gemms: self.gemms - earlier.gemms,
            gemm_flops: self.gemm_flops - earlier.gemm_flops,
            syncs: self.syncs - earlier.syncs,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
        }
    }
}

/// The running [`Counts`] (atomics, as a `Gpu` may be shared by reference across threads).
#[derive(Default)]
struct Tally([std::sync::atomic::AtomicU64; 6]);

impl Tally {
    const LAUNCHES: usize = 0;
    const GEMMS: usize = 1;
    const GEMM_FLOPS: usize = 2;
    const SYNCS: usize = 3;
    const UP: usize = 4;
    const DOWN: usize = 5;

    fn add(&self, what: usize, n: u64) {
        self.0[what].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn snapshot(&self) -> Counts {
        let v = |i: usize| self.0[i].load(std::sync::atomic::Ordering::Relaxed);
        Counts {
            launches: v(Self::LAUNCHES),
            gemms: v(Self::GEMMS),
            gemm_flops: v(Self::GEMM_FLOPS),
            syncs: v(Self::SYNCS),
            bytes_up: v(Self::UP),
            bytes_down: v(Self::DOWN),
        }
    }
}

/// An allocation on a [`Gpu`]; freed on drop.
pub struct DevBuf {
    ptr: DevPtr,
    bytes: usize,
    owner: Owner,
}

enum Owner {
    Cuda(Arc<CudaContext>),
    Host(#[allow(dead_code)] Vec<u64>),
    Empty,
}

impl DevBuf {
    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The address `offset` elements of `T` in.
    pub fn at<T>(&self, offset: usize) -> DevPtr {
        debug_assert!(offset * std::mem::size_of::<T>() <= self.bytes);
        self.ptr + (offset * std::mem::size_of::<T>()) as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if let Owner::Cuda(ctx) = &self.owner {
            if ctx.bind_to_thread().is_ok() {
                // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once; the stream
                // was synchronised by the engine's last download or by the context's teardown.
                let _ = unsafe { dr::free_sync(self.ptr) };
            }
        }
    }
}

/// Page-locked host memory for uploads (a plain vector under emulation).
pub struct PinnedBuf {
    ptr: *mut u8,
    bytes: usize,
    host: Vec<u8>,
    ctx: Option<Arc<CudaContext>>,
}

impl PinnedBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.ctx.is_some() {
            // SAFETY: `ptr` points to `bytes` bytes of page-locked memory owned by this value.
            unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
        } else {
            &mut self.host
        }
    }
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        if let Some(ctx) = &self.ctx {
            if ctx.bind_to_thread().is_ok() {
                // SAFETY: allocated by cuMemHostAlloc and freed once.
                let _ = unsafe { dr::free_host(self.ptr as *mut std::ffi::c_void) };
            }
        }
    }
}

impl Gpu {
    /// Open CUDA device `index`: check the libraries, the device, create a context, a stream and a
    /// cuBLAS handle, and compile (or load from the cache) every kernel for its architecture.
    pub fn cuda(index: usize) -> Result<Gpu> {
        libs::require(Lib::Driver)?;
        libs::require(Lib::Nvrtc)?;
        libs::require(Lib::Cublas)?;
        let info = device_info(index)?;
        no_panic("CUDA initialisation", || {
            let ctx = CudaContext::new(index).map_err(|e| drv(e, "creating a CUDA context"))?;
            // One stream and raw pointers: cudarc's per-allocation event tracking is not needed.
            // SAFETY: nothing was allocated through cudarc's tracked slices in this context.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.new_stream().map_err(|e| drv(e, "creating a stream"))?;
            let blas = Blas::new(stream.cu_stream() as *mut std::ffi::c_void)?;
            let cc = info.compute_capability.0 * 10 + info.compute_capability.1;
            let arch = nvrtc::arch_for(cc)?;
            let mut funcs = HashMap::new();
            for f in KERNEL_FILES {
                let img = nvrtc::compile_cached(f, &arch)?;
                let ptx = match img.as_ref() {
                    Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b.clone()),
                    Image::Ptx(s) => cudarc::nvrtc::Ptx::from_src(s.clone()),
                };
                let module = ctx
                    .load_module(ptx)
                    .map_err(|e| drv(e, &format!("loading kernels {} for {arch}", f.name)))?;
                for &e in f.entries {
                    let func = module
                        .load_function(e)
                        .map_err(|er| drv(er, &format!("kernel {e} in {}", f.name)))?;
                    funcs.insert(e, func);
                }
            }
            Ok(Gpu {
                backend: Backend::Cuda(Box::new(CudaDev {
                    ctx,
                    stream,
                    blas,
                    funcs,
                    arch,
                })),
                info: info.clone(),
                tally: Tally::default(),
            })
        })
    }

    /// The host emulation of the kernels (tests only; see `super::emu`).
    #[cfg(feature = "test-support")]
    pub fn emulated() -> Result<Gpu> {
        Ok(Gpu {
            backend: Backend::Emu(super::emu::library()?, Faults::default()),
            info: DeviceInfo {
                index: 0,
                name: "host emulation of the CUDA kernels".into(),
                total_mem: 0,
                compute_capability: (0, 0),
                multiprocessors: 1,
            },
            tally: Tally::default(),
        })
    }

    /// Plant a device fault in the emulation: the `syncs`-th synchronisation from now (0: the
    /// next) fails, as does every call after it (tests only).
    #[cfg(feature = "test-support")]
    pub fn plant_fault(&self, syncs: u64) {
        if let Backend::Emu(_, f) = &self.backend {
            f.syncs_left
                .store(syncs, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// What this device has been asked to do so far (see [`Counts`]).
    pub fn counts(&self) -> Counts {
        self.tally.snapshot()
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.backend, Backend::Emu(..))
    }

    /// The architecture the kernels were compiled for ("sm_90"), or "host".
    pub fn arch(&self) -> &str {
        match &self.backend {
            Backend::Cuda(c) => &c.arch,
            Backend::Emu(..) => "host",
        }
    }

    /// Make this device current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        if let Backend::Cuda(c) = &self.backend {
            c.ctx
                .bind_to_thread()
                .map_err(|e| drv(e, "binding the CUDA context"))?;
        }
        Ok(())
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        match &self.backend {
            Backend::Cuda(c) => c.ctx.mem_get_info().map_err(|e| drv(e, "cuMemGetInfo")),
            Backend::Emu(..) => Ok((usize::MAX, usize::MAX)),
        }
    }

    /// `bytes` of device memory for `what`; out of memory says how much was asked and is free.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DevBuf> {
        if bytes == 0 {
            return Ok(DevBuf {
                ptr: 0,
                bytes: 0,
                owner: Owner::Empty,
            });
        }
        match &self.backend {
            Backend::Cuda(c) => {
                c.ctx
                    .bind_to_thread()
                    .map_err(|e| drv(e, "binding the CUDA context"))?;
                // SAFETY: a plain allocation of `bytes` bytes; freed in DevBuf::drop.
                match unsafe { dr::malloc_sync(bytes) } {
                    Ok(ptr) => Ok(DevBuf {
                        ptr,
                        bytes,
                        owner: Owner::Cuda(c.ctx.clone()),
                    }),
                    Err(e) => {
                        let (free, total) = c.ctx.mem_get_info().unwrap_or((0, 0));
                        let oom = e.0 == ds::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY;
                        Err(Error::Cuda(format!(
                            "{} on {}: {what} needs {:.1} MiB, {:.1} MiB of {:.1} MiB are free{}",
                            if oom {
                                "out of device memory"
                            } else {
                                "device allocation failed"
                            },
                            self.info.name,
                            bytes as f64 / MIB,
                            free as f64 / MIB,
                            total as f64 / MIB,
                            if oom {
                                "; use a smaller --batch-size, fewer genes, or --device cpu"
                                    .to_string()
                            } else {
                                format!(" ({:?})", e.0)
                            }
                        )))
                    }
                }
            }
            Backend::Emu(_, f) => {
                f.after_fault("device allocation failed")?;
                let mut v = vec![0u64; bytes.div_ceil(8)];
                // Poison, as device memory is not zeroed: NaN in every f32 and f64 slot.
                v.iter_mut().for_each(|w| *w = 0x7FF8_0000_7FC0_0000);
                let ptr = v.as_mut_ptr() as u64;
                Ok(DevBuf {
                    ptr,
                    bytes,
                    owner: Owner::Host(v),
                })
            }
        }
    }

    /// Page-locked host memory of `bytes` for uploads.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuf> {
        match &self.backend {
            Backend::Cuda(c) if bytes > 0 => {
                c.ctx
                    .bind_to_thread()
                    .map_err(|e| drv(e, "binding the CUDA context"))?;
                // SAFETY: a plain page-locked allocation; freed in PinnedBuf::drop.
                let p = unsafe { dr::malloc_host(bytes, 0) }.map_err(|e| {
                    drv(
                        e,
                        &format!(
                            "allocating {:.1} MiB of pinned host memory",
                            bytes as f64 / MIB
                        ),
                    )
                })?;
                Ok(PinnedBuf {
                    ptr: p as *mut u8,
                    bytes,
                    host: Vec::new(),
                    ctx: Some(c.ctx.clone()),
                })
            }
            _ => Ok(PinnedBuf {
                ptr: std::ptr::null_mut(),
                bytes,
                host: vec![0u8; bytes],
                ctx: None,
            }),
        }
    }

    /// Copy `src` to `dst` (ordered on the stream; the host memory must stay untouched until the
    /// next [`Gpu::sync`] or download when it is pinned).
    pub fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.tally.add(Tally::UP, src.len() as u64);
        match &self.backend {
            Backend::Cuda(c) => {
                // SAFETY: `dst` addresses at least `src.len()` bytes of a live DevBuf (callers size
                // buffers before copying); the copy is ordered on our stream.
                unsafe { dr::memcpy_htod_async(dst, src, c.stream.cu_stream()) }
                    .map_err(|e| drv(e, "copying to the device"))
            }
            Backend::Emu(_, f) => {
                f.after_fault("copying to the device")?;
                // SAFETY: as above, `dst` is a host allocation of at least `src.len()` bytes.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
                Ok(())
            }
        }
    }

    /// Copy device memory to `dst`, waiting for all queued work.
    pub fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.tally.add(Tally::DOWN, dst.len() as u64);
        match &self.backend {
            Backend::Cuda(c) => {
                // SAFETY: `src` addresses at least `dst.len()` bytes of a live DevBuf; the stream
                // is synchronised before `dst` is read.
                unsafe { dr::memcpy_dtoh_async(dst, src, c.stream.cu_stream()) }
                    .map_err(|e| drv(e, "copying from the device"))?;
                self.sync()
            }
            Backend::Emu(_, f) => {
                // SAFETY: as above, on host memory.
                unsafe {
                    std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len())
                };
                self.tally.add(Tally::SYNCS, 1);
                f.at_sync("a kernel or copy on the device failed")
            }
        }
    }

    pub fn upload_f32(&self, dst: DevPtr, src: &[f32]) -> Result<()> {
        self.upload(dst, as_bytes(src))
    }
    pub fn upload_u32(&self, dst: DevPtr, src: &[u32]) -> Result<()> {
        self.upload(dst, as_bytes(src))
    }
    /// A new buffer holding `src` (waits for the copy).
    pub fn alloc_f32(&self, src: &[f32], what: &str) -> Result<DevBuf> {
        let b = self.alloc(src.len() * 4, what)?;
        self.upload_f32(b.ptr(), src)?;
        self.sync()?;
        Ok(b)
    }
    /// A new buffer holding `src` (waits for the copy).
    pub fn alloc_u32(&self, src: &[u32], what: &str) -> Result<DevBuf> {
        let b = self.alloc(src.len() * 4, what)?;
        self.upload_u32(b.ptr(), src)?;
        self.sync()?;
        Ok(b)
    }
    pub fn download_f32(&self, dst: &mut [f32], src: DevPtr) -> Result<()> {
        self.download(as_bytes_mut(dst), src)
    }
    pub fn download_f64(&self, dst: &mut [f64], src: DevPtr) -> Result<()> {
        self.download(as_bytes_mut(dst), src)
    }

    /// Zero `bytes` at `dst`.
    pub fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.tally.add(Tally::LAUNCHES, 1);
        match &self.backend {
            Backend::Cuda(c) => {
                // SAFETY: `dst` addresses `bytes` bytes of a live DevBuf.
                unsafe { dr::memset_d8_async(dst, 0, bytes, c.stream.cu_stream()) }
                    .map_err(|e| drv(e, "clearing device memory"))
            }
            Backend::Emu(_, f) => {
                f.after_fault("clearing device memory")?;
                // SAFETY: as above, on host memory.
                unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
                Ok(())
            }
        }
    }

    /// Wait for all queued work; a kernel fault surfaces here.
    pub fn sync(&self) -> Result<()> {
        self.tally.add(Tally::SYNCS, 1);
        match &self.backend {
            Backend::Cuda(c) => c
                .stream
                .synchronize()
                .map_err(|e| drv(e, "a kernel or copy on the device failed")),
            Backend::Emu(_, f) => f.at_sync("a kernel or copy on the device failed"),
        }
    }

    /// Launch kernel `name` with its argument struct.
    pub fn launch<A: DeviceRepr>(&self, name: &'static str, l: Launch, args: &A) -> Result<()> {
        self.tally.add(Tally::LAUNCHES, 1);
        match &self.backend {
            Backend::Cuda(c) => {
                let f = c
                    .funcs
                    .get(name)
                    .ok_or_else(|| Error::Cuda(format!("kernel {name} is not loaded")))?;
                let cfg = LaunchConfig {
                    grid_dim: l.grid,
                    block_dim: l.block,
                    shared_mem_bytes: l.smem,
                };
                let mut b = c.stream.launch_builder(f);
                b.arg(args);
                // SAFETY: `A` is the #[repr(C)] mirror of the kernel's argument struct (checked by
                // the per-kernel tests), and every pointer in it addresses a live DevBuf of the
                // size the kernel reads or writes for this launch's shape.
                unsafe { b.launch(cfg) }.map_err(|e| drv(e, &format!("launching {name}")))?;
                Ok(())
            }
            Backend::Emu(lib, f) => {
                f.after_fault(&format!("launching {name}"))?;
                emulated_launch(lib, name, l, args)
            }
        }
    }

    /// Column-major `C = alpha op(A) op(B) + beta C` (cuBLAS sgemm, pure f32: no TF32).
    pub fn sgemm(&self, g: &Sgemm) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        self.tally.add(Tally::GEMMS, 1);
        self.tally.add(
            Tally::GEMM_FLOPS,
            2 * (g.m as u64) * (g.n as u64) * (g.k as u64),
        );
        match &self.backend {
            // SAFETY: the pointers address matrices of the stated shapes and leading dimensions
            // inside live DevBufs (the engine sizes them from the layout); C does not alias A or
            // B. The handle is bound to our stream.
            Backend::Cuda(cd) => unsafe { cd.blas.sgemm(g) },
            Backend::Emu(_, f) => {
                f.after_fault("cuBLAS sgemm")?;
                // SAFETY: as above, on host memory.
                unsafe { host_sgemm(g) };
                Ok(())
            }
        }
    }
}

/// Launch an emulated kernel with its argument struct.
#[cfg(feature = "test-support")]
fn emulated_launch<A>(lib: &EmuLib, name: &str, l: Launch, args: &A) -> Result<()> {
    lib.launch(name, l.grid, l.block, l.smem, args)
}
#[cfg(not(feature = "test-support"))]
fn emulated_launch<A>(lib: &EmuLib, _: &str, _: Launch, _: &A) -> Result<()> {
    match *lib {}
}

/// The column-major reference GEMM used by the emulation, accumulating in f64.
///
/// # Safety
/// The pointers must address the matrices of the stated shapes in host memory.
unsafe fn host_sgemm(g: &Sgemm) {
    let Sgemm {
        trans_a: ta,
        trans_b: tb,
        m,
        n,
        k,
        alpha,
        lda,
        ldb,
        beta,
        ldc,
        ..
    } = *g;
    let (a, b, c) = (g.a as *const f32, g.b as *const f32, g.c as *mut f32);
    for j in 0..n {
        for i in 0..m {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta {
                    *a.add(p + i * lda)
                } else {
                    *a.add(i + p * lda)
                };
                let bv = if tb {
                    *b.add(j + p * ldb)
                } else {
                    *b.add(p + j * ldb)
                };
                s += av as f64 * bv as f64;
            }
            let cp = c.add(i + j * ldc);
            let old = if beta == 0.0 { 0.0 } else { beta * *cp };
            *cp = alpha * s as f32 + old;
        }
    }
}

pub(crate) fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data numbers viewed as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub(crate) fn as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: plain-old-data numbers (f32, f64, u32) for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}
