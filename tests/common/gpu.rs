//! What the GPU tests share (tests/cuda_*.rs): getting a device or saying why the test skips, and
//! comparing tensors with named tolerances, printing the first mismatches.
//!
//! A test that needs a GPU calls [`gpu_or_skip`]; on a machine without one it prints
//! `skipped: no CUDA driver/GPU found (<reason>)` and returns, unless `SCVI_RS_REQUIRE_GPU=1` (as
//! the device kit's scripts/gpu/run.sh sets), which makes that a failure: on the GPU machine a
//! skip would pass without testing anything. The same test bodies also run on the host emulation
//! of the kernels ([`emulated_or_skip`], needs a C++ compiler), so every path the device tests take
//! is compiled and exercised everywhere; only the real-device runs say anything about the GPU
//! itself.
//!
//! Nothing here depends on where the tests were built: the binary is `SCVI_RS_BIN` when set
//! ([`scvi_bin`]), and data come through environment variables, so the kit can carry the test
//! executables to another machine.

use scvi_rs::cuda::libs::{self, Lib};
use scvi_rs::cuda::{availability, Gpu};
use std::path::PathBuf;

/// Whether `SCVI_RS_REQUIRE_GPU=1`: a GPU test that cannot run fails instead of skipping.
pub fn gpu_required() -> bool {
    std::env::var("SCVI_RS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Skip `test` for want of something a GPU test needs (the device, its data), or fail when
/// [`gpu_required`].
pub fn skip_gpu_test(test: &str, why: &str) {
    if gpu_required() {
        panic!("{test}: SCVI_RS_REQUIRE_GPU=1 but it cannot run: {why}");
    }
    skip(test, why);
}

/// The scvi-rs binary: `SCVI_RS_BIN` when set (the device kit carries it elsewhere than where it
/// was built), else the one cargo built for these tests.
pub fn scvi_bin() -> PathBuf {
    std::env::var_os("SCVI_RS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_scvi-rs")))
}

/// Print why `test` skipped. Written straight to the process's stderr, past the test harness's
/// output capture, so the reason shows in a plain `cargo test` run too.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
}

/// Device 0, or `None` after printing why the test skips (a failure when [`gpu_required`]).
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match availability().and_then(|_| Gpu::cuda(0)) {
        Ok(g) => Some(g),
        Err(e) => {
            skip_gpu_test(test, &format!("no CUDA driver/GPU found ({e})"));
            None
        }
    }
}

/// The host emulation of the kernels, or `None` after printing why (no C++ compiler).
pub fn emulated_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::emulated() {
        Ok(g) => Some(g),
        Err(e) => {
            skip(test, &format!("kernel emulation unavailable ({e})"));
            None
        }
    }
}

/// Where a GPU test runs: on the GPU, or on the host emulation of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gpu,
    Emulated,
}

impl Target {
    /// Whether `test` can run here (else it printed why it skips), and then its seed and
    /// generator ([`super::seeded`]).
    pub fn seeded(self, test: &str) -> Option<(u64, super::Rng)> {
        self.open(test)?;
        Some(super::seeded(test))
    }

    /// A fresh device of this kind, or `None` after printing why `test` skips.
    pub fn open(self, test: &str) -> Option<Gpu> {
        match self {
            Target::Gpu => gpu_or_skip(test),
            Target::Emulated => emulated_or_skip(test),
        }
    }
}

/// A pair of tests per line, `emulated_name, gpu_name => body;`: each calls `body(target, name)`
/// with its device (the host emulation, the GPU) and its own name.
#[allow(unused_macros)] // Each test binary uses a part of the helpers.
macro_rules! device_tests {
    ($($emulated:ident, $gpu:ident => $body:expr;)*) => {$(
        #[test]
        fn $emulated() {
            ($body)(crate::common::gpu::Target::Emulated, stringify!($emulated));
        }
        #[test]
        fn $gpu() {
            ($body)(crate::common::gpu::Target::Gpu, stringify!($gpu));
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use device_tests;

/// Whether NVRTC loads; prints why not.
pub fn nvrtc_or_skip(test: &str) -> bool {
    match libs::require(Lib::Nvrtc) {
        Ok(()) => true,
        Err(e) => {
            skip(
                test,
                &format!("{e} (scripts/ci/setup_nvrtc.sh installs one without a GPU)"),
            );
            false
        }
    }
}

/// A per-tensor tolerance: element-wise `|got - want| <= rtol |want| + atol`, and the whole
/// tensor's `||got - want|| / ||want|| <= norm_rtol` (skipped when `want` is all zeros).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
    pub norm_rtol: f64,
}

impl Tol {
    pub const fn new(rtol: f64, atol: f64, norm_rtol: f64) -> Tol {
        Tol {
            rtol,
            atol,
            norm_rtol,
        }
    }
}

/// Collects comparisons and fails once, at the end, with every failing tensor and its first
/// mismatches.
#[derive(Default)]
pub struct Checker {
    pub context: String,
    failures: Vec<String>,
    checked: usize,
}

impl Checker {
    pub fn new(context: impl Into<String>) -> Self {
        Checker {
            context: context.into(),
            ..Default::default()
        }
    }

    /// Compare `got` with `want` under `tol`; prints one summary line per tensor.
    pub fn check(&mut self, name: &str, got: &[f64], want: &[f64], tol: Tol) {
        self.checked += 1;
        if got.len() != want.len() {
            self.failures.push(format!(
                "{name}: length {} vs reference {}",
                got.len(),
                want.len()
            ));
            return;
        }
        let mut bad = Vec::new();
        let (mut d2, mut w2, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let d = (g - w).abs();
            // NaN in either fails: the comparison is false.
            let within = d <= tol.rtol * w.abs() + tol.atol;
            if !within {
                bad.push(i);
            }
            if d.is_finite() {
                max_abs = max_abs.max(d);
            }
            d2 += (g - w) * (g - w);
            w2 += w * w;
        }
        let rel = if w2 > 0.0 {
            (d2 / w2).sqrt()
        } else {
            d2.sqrt()
        };
        let norm_ok = w2 == 0.0 || rel <= tol.norm_rtol;
        println!(
            "  {name:<48} n={:<8} max|d|={max_abs:.3e} ||d||/||ref||={rel:.3e} {}",
            got.len(),
            if bad.is_empty() && norm_ok {
                "ok"
            } else {
                "MISMATCH"
            }
        );
        if !bad.is_empty() || !norm_ok {
            let mut m = format!(
                "{name}: {} of {} elements outside |d| <= {:e} |ref| + {:e}; ||d||/||ref|| = {rel:.3e} (limit {:e}); first mismatches:",
                bad.len(),
                got.len(),
                tol.rtol,
                tol.atol,
                tol.norm_rtol
            );
            for &i in bad.iter().take(8) {
                m += &format!(
                    "\n      [{i}] got {:.9e} want {:.9e} (diff {:.3e})",
                    got[i],
                    want[i],
                    got[i] - want[i]
                );
            }
            self.failures.push(m);
        }
    }

    pub fn check_f32(&mut self, name: &str, got: &[f32], want: &[f32], tol: Tol) {
        let g: Vec<f64> = got.iter().map(|&v| v as f64).collect();
        let w: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        self.check(name, &g, &w, tol);
    }

    /// Exact equality (bit for bit as f32), e.g. for noise and dropout masks.
    pub fn check_exact(&mut self, name: &str, got: &[f32], want: &[f32]) {
        self.checked += 1;
        let bad: Vec<usize> = (0..got.len().min(want.len()))
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        let ok = bad.is_empty() && got.len() == want.len();
        println!(
            "  {name:<48} n={:<8} exact: {}",
            got.len(),
            if ok { "ok" } else { "MISMATCH" }
        );
        if !ok {
            let mut m = format!(
                "{name}: {} of {} elements differ (lengths {} / {}); first:",
                bad.len(),
                got.len(),
                got.len(),
                want.len()
            );
            for &i in bad.iter().take(8) {
                m += &format!("\n      [{i}] got {:e} want {:e}", got[i], want[i]);
            }
            self.failures.push(m);
        }
    }

    /// Every failure in one message, if any.
    pub fn failure(self) -> Option<String> {
        if self.failures.is_empty() {
            return None;
        }
        Some(format!(
            "{}: {} of {} tensors mismatch the CPU reference:\n  {}",
            self.context,
            self.failures.len(),
            self.checked,
            self.failures.join("\n  ")
        ))
    }

    /// Panic with every failure, if any.
    pub fn finish(self) {
        if let Some(m) = self.failure() {
            panic!("{m}");
        }
    }
}
