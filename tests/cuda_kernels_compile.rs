//! Every kernel in kernels/*.cu compiles with NVRTC, for the architectures of the GPUs scvi-rs is
//! meant for, on any machine where libnvrtc can be found: no GPU is needed. CI makes NVRTC findable
//! with scripts/ci/setup_nvrtc.sh (the nvidia-cuda-nvrtc-cu12 wheel in a venv, its directory in
//! SCVI_RS_CUDA_LIB_DIR), so a kernel that stops compiling fails CI. Without NVRTC the tests print
//! why they skip, unless SCVI_RS_REQUIRE_NVRTC=1, which makes that a failure.

mod common;

use common::gpu::nvrtc_or_skip;
use scvi_rs::cuda::kernels::{KernelFile, KERNEL_FILES};
use scvi_rs::cuda::nvrtc::{self, Image};
use scvi_rs::Error;
use std::time::Instant;

fn nvrtc_here(test: &str) -> bool {
    if nvrtc_or_skip(test) {
        return true;
    }
    if std::env::var("SCVI_RS_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("{test}: SCVI_RS_REQUIRE_NVRTC=1 but NVRTC could not be loaded");
    }
    false
}

/// Real architectures to compile for: Volta to Hopper (and newer where this NVRTC knows them),
/// plus one PTX target for the driver's JIT path.
fn archs() -> Vec<String> {
    let supported = nvrtc::supported_archs().expect("NVRTC architectures");
    let mut v: Vec<String> = [70, 75, 80, 86, 89, 90, 100, 120]
        .iter()
        .filter(|a| supported.contains(a))
        .map(|a| format!("sm_{a}"))
        .collect();
    v.push("compute_80".into());
    v
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    let test = "every_kernel_compiles_with_nvrtc";
    if !nvrtc_here(test) {
        return;
    }
    let (major, minor) = nvrtc::version().expect("NVRTC version");
    println!("NVRTC {major}.{minor}");
    let mut failures = Vec::new();
    for arch in archs() {
        for f in KERNEL_FILES {
            let t0 = Instant::now();
            match nvrtc::compile(f, &arch) {
                Ok(img) => {
                    assert!(!img.is_empty(), "{} for {arch}: empty image", f.name);
                    // Every entry point the engine loads is in the image.
                    let text: Vec<u8> = match &img {
                        Image::Cubin(b) => b.clone(),
                        Image::Ptx(s) => s.clone().into_bytes(),
                    };
                    for e in f.entries {
                        let found = text.windows(e.len()).any(|w| w == e.as_bytes());
                        assert!(found, "{} for {arch}: entry point {e} missing", f.name);
                    }
                    println!(
                        "  {arch:<11} {:<10} {:>8} bytes {:>6.0} ms",
                        f.name,
                        img.len(),
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                }
                Err(e) => failures.push(format!("{} for {arch}: {e}", f.name)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_kernel_that_does_not_compile_is_a_clear_error() {
    if !nvrtc_here("a_kernel_that_does_not_compile_is_a_clear_error") {
        return;
    }
    let broken = KernelFile {
        name: "broken.cu",
        source: "#include \"common.cuh\"\nstruct A { float* x; };\nSCVI_KERNEL(broken_fwd, A) { a.x[0] = no_such_function(1.0f); }\n",
        entries: &["broken_fwd"],
        cpu_twin: "none",
    };
    match nvrtc::compile(&broken, "sm_90") {
        Err(Error::Cuda(m)) => {
            println!("{m}");
            assert!(m.contains("broken.cu"), "names the file: {m}");
            assert!(m.contains("no_such_function"), "carries NVRTC's log: {m}");
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a broken kernel compiled"),
    }
}

#[test]
fn compiled_kernels_are_cached_per_arch_and_source() {
    if !nvrtc_here("compiled_kernels_are_cached_per_arch_and_source") {
        return;
    }
    let f = &KERNEL_FILES[KERNEL_FILES.len() - 1];
    let a = nvrtc::compile_cached(f, "sm_80").expect("compile");
    let b = nvrtc::compile_cached(f, "sm_80").expect("cached");
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "second compile reuses the first"
    );
    let c = nvrtc::compile_cached(f, "sm_90").expect("compile");
    assert!(
        !std::sync::Arc::ptr_eq(&a, &c),
        "another architecture compiles again"
    );
}

#[test]
fn arch_for_picks_the_device_or_the_newest_known() {
    if !nvrtc_here("arch_for_picks_the_device_or_the_newest_known") {
        return;
    }
    assert_eq!(nvrtc::arch_for(90).unwrap(), "sm_90");
    assert_eq!(nvrtc::arch_for(80).unwrap(), "sm_80");
    // A compute capability newer than any NVRTC knows falls back to PTX for the newest it knows.
    let newest = *nvrtc::supported_archs().unwrap().iter().max().unwrap();
    assert_eq!(nvrtc::arch_for(999).unwrap(), format!("compute_{newest}"));
}
