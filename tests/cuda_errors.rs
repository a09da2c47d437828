//! Bad situations give `Error::Cuda` with a clear message and a non-zero exit, never a panic: no
//! driver, no NVRTC, a device that does not exist, out of device memory. (A kernel that does not
//! compile: tests/cuda_kernels_compile.rs.) What can be provoked depends on the machine; each test
//! says which case it saw.

mod common;

use common::gpu::{gpu_or_skip, gpu_required, scvi_bin};
use scvi_rs::cuda::{self, device, libs};
use scvi_rs::data::simulate::SimConfig;
use scvi_rs::model::ModelConfig;
use scvi_rs::{Device, Error, Scvi, Setup};
use std::process::Command;

fn tiny_model() -> Scvi {
    let data = scvi_rs::data::simulate::simulate(&SimConfig {
        n_cells: 40,
        n_genes: 30,
        ..SimConfig::default()
    });
    Scvi::new(&data, Setup::default(), ModelConfig::default(), 0).expect("model")
}

#[test]
fn asking_for_a_gpu_is_an_error_or_works_never_a_panic() {
    let model = tiny_model();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model
            .engine(Device::Cuda(0), 0, Default::default())
            .map(|e| e.name())
    }));
    match r {
        Err(_) => panic!("asking for cuda:0 panicked"),
        Ok(Ok(name)) => println!("a GPU is here: {name}"),
        Ok(Err(Error::Cuda(m))) => {
            println!("no GPU engine here: {m}");
            assert!(!gpu_required(), "SCVI_RS_REQUIRE_GPU=1 but: {m}");
            assert!(!cuda::gpu_available());
            assert!(m.len() > 20, "says why: {m}");
        }
        Ok(Err(e)) => panic!("expected Error::Cuda, got {e}"),
    }
}

#[test]
fn a_device_that_does_not_exist() {
    let model = tiny_model();
    match model.engine(Device::Cuda(97), 0, Default::default()) {
        Ok(_) => panic!("cuda:97 exists?"),
        Err(Error::Cuda(m)) => {
            println!("{m}");
            if device::device_count().is_ok() {
                assert!(m.contains("cuda:97 does not exist"), "{m}");
            }
        }
        Err(e) => panic!("expected Error::Cuda, got {e}"),
    }
}

#[test]
fn missing_libraries_are_reported_not_panicked() {
    for (lib, loaded) in libs::report() {
        match loaded {
            Ok(l) => println!("lib{}: {}", lib.stem(), l.describe()),
            Err(e) => {
                let detail = e.to_string();
                println!("lib{}: {detail}", lib.stem());
                assert!(detail.contains("could not be loaded"), "{detail}");
            }
        }
    }
}

#[test]
fn out_of_device_memory_says_how_much() {
    let Some(gpu) = gpu_or_skip("out_of_device_memory_says_how_much") else {
        return;
    };
    let (free, _) = gpu.mem_info().expect("mem info");
    match gpu.alloc(free.saturating_mul(4).max(1 << 50), "a test buffer") {
        Ok(_) => panic!("allocated 4x the free memory"),
        Err(Error::Cuda(m)) => {
            println!("{m}");
            assert!(m.contains("MiB are free"), "{m}");
            assert!(m.contains("a test buffer needs"), "{m}");
        }
        Err(e) => panic!("expected Error::Cuda, got {e}"),
    }
}

/// `demo --device cuda:0` exits 1 with a CUDA message where there is no GPU, and trains where
/// there is one.
#[test]
fn cli_device_cuda_exits_non_zero_without_a_gpu_and_trains_with_one() {
    let out = Command::new(scvi_bin())
        .args([
            "demo", "--device", "cuda:0", "--cells", "200", "--genes", "50",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run scvi-rs");
    let err = String::from_utf8_lossy(&out.stderr);
    println!(
        "exit {:?}\n{}\n{err}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked"), "no panic: {err}");
    if cuda::gpu_available() {
        assert!(out.status.success(), "demo on the GPU failed: {err}");
    } else {
        assert!(!gpu_required(), "SCVI_RS_REQUIRE_GPU=1 but no GPU: {err}");
        assert!(!out.status.success(), "exit status");
        assert!(err.contains("CUDA"), "says CUDA: {err}");
    }
}

#[test]
fn doctor_runs_everywhere() {
    let out = Command::new(scvi_bin())
        .arg("doctor")
        .output()
        .expect("run scvi-rs doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "doctor exit status");
    for s in [
        "CPU",
        "threads",
        "SIMD",
        "libcuda",
        "libnvrtc",
        "libcublas",
        "GPUs",
        "Kernels",
    ] {
        assert!(text.contains(s), "doctor reports {s}");
    }
    if gpu_required() {
        assert!(text.contains("cuda:0: "), "doctor lists the GPU: {text}");
        assert!(!text.contains("missing"), "every library loads: {text}");
    }
}
