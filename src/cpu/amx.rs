//! Intel AMX-BF16 (Advanced Matrix Extensions): whether this process may use the tile unit, and the
//! one microkernel the bf16 products are built from.
//!
//! The tile unit holds eight registers `tmm0..tmm7` of up to 16 rows x 64 bytes. `tdpbf16ps C, A,
//! B` adds to the f32 tile `C` (16 x 16) the product of a bf16 tile `A` (16 rows x 32 values along
//! k) and a bf16 tile `B` in "VNNI" layout (16 rows of k-pairs x 16 columns, each element the pair
//! `(b[2p][n], b[2p+1][n])`):
//!
//! ```text
//! C[m][n] += sum_{p < 16} A[m][2p] B[p][n].0 + A[m][2p+1] B[p][n].1
//! ```
//!
//! 16 x 16 x 32 multiply-adds per instruction, one instruction per 16 cycles per core: 1,024 flops
//! per cycle, against 64 for AVX-512 f32 FMA (BENCHMARKS.md "bf16" has the measurement). The
//! products of two bf16 values are exact in f32; how the hardware accumulates the 32 products and
//! C is not specified bit for bit (measured: neither the SDM's sequential pseudo-code nor one
//! rounding of the exact sum; 92% of outputs equal the exactly rounded sum), but it is at least as
//! accurate as f32 sequential accumulation, and deterministic: the same inputs give the same bits.
//!
//! Using the unit needs three things, checked once by [`available`]: the CPU reports AMX-TILE and
//! AMX-BF16 (CPUID leaf 7), the kernel grants the process the tile state
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux 5.16+; without it the first tile
//! instruction faults), and `SCVI_RS_ISA` is unset or `amx` (any lower cap turns AMX off, as it
//! caps the element-wise kernels in `simd`). Each thread loads the tile configuration before its
//! tile work and releases the tiles after it ([`Tiles`]).

use std::sync::OnceLock;

/// Whether the AMX-BF16 kernels can run in this process (checked and, on Linux, the tile state
/// requested once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let allowed = match std::env::var("SCVI_RS_ISA") {
            Err(_) => true,
            Ok(v) => v == "amx",
        };
        allowed && detect()
    })
}

/// Why AMX is not used here, in words (for the log), or None when it is.
pub fn unavailable_reason() -> Option<String> {
    if available() {
        return None;
    }
    if let Ok(v) = std::env::var("SCVI_RS_ISA") {
        if v != "amx" {
            return Some(format!(
                "SCVI_RS_ISA={v} caps the instruction set below AMX"
            ));
        }
    }
    Some(if cpu_has_amx_bf16() {
        "the operating system refused the AMX tile state (Linux 5.16 or newer grants it)".into()
    } else {
        "this CPU has no AMX-BF16 (Intel Xeon 4th generation, Sapphire Rapids, or newer)".into()
    })
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID exists on every x86-64 CPU; leaf 7 is valid when the maximum leaf is >= 7.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // EDX bit 22: AMX-BF16, bit 24: AMX-TILE. The packing kernels use AVX512-BF16 conversions.
    edx & (1 << 22) != 0
        && edx & (1 << 24) != 0
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    if !cpu_has_amx_bf16() {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the process's permitted xstate features;
    // it reads no memory of ours. It is process-wide, so rayon's threads inherit it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// The tile configuration (palette 1): `tmm0..tmm3` the 2 x 2 f32 accumulators, `tmm4`/`tmm5`
/// two A tiles, `tmm6`/`tmm7` two B tiles, every one 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// The tile registers configured on this thread for the lifetime of the value; released on drop
/// (`tilerelease` returns the unit to its initial state, so a context switch saves no tile data).
pub struct Tiles(());

impl Tiles {
    /// Configure the tiles on the calling thread.
    ///
    /// # Safety
    /// [`available`] must have returned true.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn configure() -> Tiles {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // SAFETY: the process holds the tile permission (caller's contract); `cfg` is a valid
        // 64-byte palette-1 configuration.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
        }
        Tiles(())
    }

    /// `C += sum_{t < k_tiles} A_t B_t` for a 32 x 32 block of f32 outputs, as 2 x 2 tiles.
    ///
    /// A: two rows of `k_tiles` packed 16 x 32 bf16 tiles (1 KiB each, `a_step` bytes from one
    /// k-tile to the next), the second row `a_next` bytes after the first. B: the same for two
    /// 16-column VNNI tiles (`b_step`, `b_next`). C: row-major f32 at `c`, `ldc` bytes between rows; with `load_c` false
    /// it starts from zero (and is not read). The k-tiles are added in order: the result depends
    /// on the inputs only.
    ///
    /// # Safety
    /// The tiles must be configured on this thread (`self`); A and B must hold `k_tiles` tiles
    /// each at the given places, and C 32 rows of 32 f32 at stride `ldc`, none overlapping.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub unsafe fn block_2x2(
        &self,
        a: *const u16,
        a_step: usize,
        a_next: usize,
        b: *const u16,
        b_step: usize,
        b_next: usize,
        k_tiles: usize,
        c: *mut f32,
        ldc: usize,
        load_c: bool,
    ) {
        use std::arch::asm;
        // SAFETY (all blocks): the caller's contract; tmm0..7 are configured 16 x 64 B.
        let c_lo = unsafe { c.byte_add(16 * ldc) };
        unsafe {
            if load_c {
                asm!(
                    "tileloadd tmm0, [{c} + {ld}]",
                    "tileloadd tmm1, [{c} + {ld} + 64]",
                    "tileloadd tmm2, [{c2} + {ld}]",
                    "tileloadd tmm3, [{c2} + {ld} + 64]",
                    c = in(reg) c, c2 = in(reg) c_lo, ld = in(reg) ldc,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            if k_tiles > 0 {
                asm!(
                    "2:",
                    "tileloadd tmm4, [{a} + {s}]",
                    "tileloadd tmm6, [{b} + {s}]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b2} + {s}]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a2} + {s}]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "add {a}, {ast}",
                    "add {a2}, {ast}",
                    "add {b}, {bst}",
                    "add {b2}, {bst}",
                    "dec {k}",
                    "jnz 2b",
                    a = inout(reg) a => _,
                    a2 = inout(reg) a.byte_add(a_next) => _,
                    b = inout(reg) b => _,
                    b2 = inout(reg) b.byte_add(b_next) => _,
                    k = inout(reg) k_tiles => _,
                    s = in(reg) 64usize,
                    ast = in(reg) a_step,
                    bst = in(reg) b_step,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c} + {ld}], tmm0",
                "tilestored [{c} + {ld} + 64], tmm1",
                "tilestored [{c2} + {ld}], tmm2",
                "tilestored [{c2} + {ld} + 64], tmm3",
                c = in(reg) c, c2 = in(reg) c_lo, ld = in(reg) ldc,
                options(nostack),
            );
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tiles were configured by `configure` (the only constructor).
        unsafe {
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
    }
}
