//! The dynamic loader, thinly wrapped: open a shared library by absolute path or by name, look up
//! a symbol, and ask which file holds an address. The CUDA libraries ([`super::libs`]) and the
//! kernel emulation's library (`super::emu`) are loaded through it.
//!
//! Handles are never closed: a CUDA library, once loaded, stays for the life of the process (the
//! driver and NVRTC keep state that outlives any one call), and closing a library whose functions
//! other code still points to would be unsound.

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};

/// A library opened with `dlopen`, kept open for the life of the process.
#[derive(Clone, Copy, Debug)]
pub struct Handle(*mut c_void);

// SAFETY: a dlopen handle is an opaque token that glibc allows on any thread; it is never closed.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

/// How a library is named to `dlopen`.
#[derive(Clone, Copy, Debug)]
pub enum Name<'a> {
    /// An absolute path: exactly this file.
    Path(&'a Path),
    /// A bare file name (`libcuda.so.1`): the loader's own search (`LD_LIBRARY_PATH` as it was at
    /// start-up, the `ldconfig` cache, the system folders), or a loaded library of that `SONAME`.
    Soname(&'a str),
}

/// The loader's last error message.
fn last_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message owned by libc, copied at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Open a library with `RTLD_NOW`, plus `RTLD_GLOBAL` when `global` (its symbols then resolve
/// the libraries loaded after it, and its `SONAME` answers later `dlopen`s by that name: how
/// NVRTC finds the `libnvrtc-builtins` preloaded beside it). The error is the loader's message.
pub fn open(name: Name<'_>, global: bool) -> Result<Handle, String> {
    let c = match name {
        Name::Path(p) => CString::new(p.as_os_str().as_encoded_bytes()),
        Name::Soname(s) => CString::new(s),
    }
    .map_err(|_| "a library name with a NUL byte".to_string())?;
    let flags = libc::RTLD_NOW | if global { libc::RTLD_GLOBAL } else { 0 };
    // SAFETY: `c` is a NUL-terminated name; dlopen has no other preconditions. Running the
    // library's initialisers is what loading it means.
    let h = unsafe { libc::dlopen(c.as_ptr(), flags) };
    if h.is_null() {
        Err(last_error())
    } else {
        Ok(Handle(h))
    }
}

impl Handle {
    /// The address of symbol `name`, or the loader's message when the library lacks it.
    pub fn sym(&self, name: &str) -> Result<*mut c_void, String> {
        let c = CString::new(name).map_err(|_| "a symbol name with a NUL byte".to_string())?;
        // SAFETY: `self.0` is a live handle (never closed) and `c` a NUL-terminated name.
        let p = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        if p.is_null() {
            Err(format!("symbol {name} missing: {}", last_error()))
        } else {
            Ok(p)
        }
    }

    /// The file this library was loaded from, found through one of its symbols.
    pub fn file(&self, symbol: &str) -> Option<PathBuf> {
        file_of(self.sym(symbol).ok()?)
    }
}

/// The file of the loaded library that holds `addr` (`dladdr`).
fn file_of(addr: *const c_void) -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: `info` is a valid out-structure; dladdr only reads `addr` as a number.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader, copied at once.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

/// Look up `name` in `h` as a function pointer of type `F`.
///
/// # Safety
/// `F` must be an `extern "C"` function pointer type with exactly the signature the library
/// defines for `name`.
pub unsafe fn function<F: Copy>(h: &Handle, name: &str) -> Result<F, String> {
    debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    let p = h.sym(name)?;
    // SAFETY: the caller guarantees `F` is the symbol's function-pointer type, which has the size
    // and representation of a data pointer on every platform glibc supports.
    Ok(std::mem::transmute_copy::<*mut c_void, F>(&p))
}

/// A table of a library's C functions, looked up by symbol name: `struct Api { field: "symbol" =>
/// fn(args) -> ret, ... }` declares the struct and its `load(&Handle)`. The signatures are the
/// library's own declarations; `load` is unsafe because nothing can check them.
macro_rules! fn_table {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($field:ident: $sym:literal => fn($($arg:ty),*) -> $ret:ty,)*
    }) => {
        $(#[$m])*
        $vis struct $name {
            $($field: unsafe extern "C" fn($($arg),*) -> $ret,)*
        }
        impl $name {
            /// Look every function up in `h`.
            ///
            /// # Safety
            /// The library behind `h` must define each symbol with the signature declared here.
            unsafe fn load(h: &$crate::cuda::dl::Handle) -> ::std::result::Result<Self, String> {
                Ok($name {
                    $($field: $crate::cuda::dl::function(h, $sym)?,)*
                })
            }
        }
    };
}
pub(crate) use fn_table;
