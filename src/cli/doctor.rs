//! `scvi-rs doctor`: what this machine offers scvi-rs. The CPU (threads, SIMD), whether libcuda,
//! libnvrtc and libcublas load, each GPU (name, memory, compute capability), and every kernel
//! compiled with NVRTC (for each GPU's architecture, or for `--arch` / sm_90 and sm_80 when there
//! is no GPU). It fails only when a kernel does not compile; a machine without CUDA is a report,
//! not an error.

use anyhow::{bail, Result};
use clap::Args;
use scvi_rs::cuda::{device, kernels, libs, nvrtc};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DoctorCmd {
    /// Also compile the kernels for this architecture (sm_80, sm_90, compute_90, ...); repeatable.
    #[arg(long)]
    pub arch: Vec<String>,
}

fn cpu_report() {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    println!("CPU");
    println!("  model:   {model}");
    println!(
        "  threads: {threads} available, rayon uses {}",
        rayon::current_num_threads()
    );
    println!("  SIMD:    {}", simd_features().join(" "));
}

fn simd_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! f {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) {
                    v.push($name);
                }
            )*};
        }
        f!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq");
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            v.push("neon");
        }
        if std::arch::is_aarch64_feature_detected!("sve") {
            v.push("sve");
        }
    }
    if v.is_empty() {
        v.push("(none detected)");
    }
    v
}

pub fn run_doctor(cmd: &DoctorCmd) -> Result<()> {
    cpu_report();
    println!();
    println!("CUDA libraries (loaded at run time; none is needed to build or to train on the CPU)");
    let mut have = std::collections::HashMap::new();
    for (lib, loaded) in libs::report() {
        have.insert(lib.stem(), loaded.is_ok());
        let name = format!("lib{}", lib.stem());
        match loaded {
            Ok(l) => println!("  {name:<9} {}", l.describe()),
            Err(e) => println!("  {name:<9} missing: {e}"),
        }
    }
    println!("  searched, in order:");
    for d in libs::search_dirs() {
        println!("    {} ({})", d.dir.display(), d.source.describe());
    }
    let nvrtc_ok = have.get("nvrtc").copied().unwrap_or(false);
    if nvrtc_ok {
        match (nvrtc::version(), nvrtc::supported_archs()) {
            (Ok((a, b)), Ok(archs)) => println!(
                "  NVRTC {a}.{b}, architectures {}",
                archs
                    .iter()
                    .map(|a| format!("sm_{a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            (Err(e), _) | (_, Err(e)) => println!("  NVRTC: {e}"),
        }
    }

    println!();
    println!("GPUs");
    let mut archs: Vec<String> = Vec::new();
    match device::device_count() {
        Ok(0) => println!("  none: the CUDA driver reports no device"),
        Ok(n) => {
            for i in 0..n {
                match device::device_info(i) {
                    Ok(info) => {
                        println!("  {info}");
                        let cc = info.compute_capability.0 * 10 + info.compute_capability.1;
                        if nvrtc_ok {
                            match nvrtc::arch_for(cc) {
                                Ok(a) => archs.push(a),
                                Err(e) => println!("    {e}"),
                            }
                        }
                    }
                    Err(e) => println!("  cuda:{i}: {e}"),
                }
            }
        }
        Err(e) => println!("  none: {e}"),
    }
    archs.extend(cmd.arch.iter().cloned());
    if archs.is_empty() {
        // No GPU: compile for the H100's architecture and the A100's, so a broken kernel shows.
        archs = vec!["sm_90".to_string(), "sm_80".to_string()];
    }
    archs.sort();
    archs.dedup();

    println!();
    println!("Kernels (kernels/*.cu, compiled with NVRTC)");
    if !nvrtc_ok {
        println!(
            "  not compiled: NVRTC is missing (scripts/ci/setup_nvrtc.sh installs it into a venv; \
             then set {})",
            libs::LIB_DIR_ENV
        );
        return Ok(());
    }
    let mut failed = 0;
    for arch in &archs {
        for f in kernels::KERNEL_FILES {
            let t0 = Instant::now();
            match nvrtc::compile(f, arch) {
                Ok(img) => println!(
                    "  {arch:<11} {:<10} ok  {:>8} bytes {:>6.0} ms  ({})",
                    f.name,
                    img.len(),
                    t0.elapsed().as_secs_f64() * 1e3,
                    f.entries.join(", ")
                ),
                Err(e) => {
                    failed += 1;
                    println!("  {arch:<11} {:<10} FAILED\n{e}", f.name);
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} kernel compilation(s) failed");
    }
    Ok(())
}
