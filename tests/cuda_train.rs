//! 20 epochs on kang_ifnb_hvg2k.h5ad (shared/data) with the GPU engine give the same held-out ELBO
//! as the CPU engine, within the spread between seeds: both engines train with seeds 0 and 1 on
//! the same split, and the GPU runs' mean ELBO on the validation cells must lie within the larger
//! of the two engines' seed-to-seed spreads of the CPU runs' mean. Needs a GPU (else prints why it
//! skips) and the data file (`SCVI_RS_KANG_H5AD`, else ../shared/data or shared/data beside the
//! crate).

mod common;

use common::gpu::{gpu_or_skip, skip_gpu_test};
use scvi_rs::model::ModelConfig;
use scvi_rs::store::load_dataset;
use scvi_rs::train::TrainConfig;
use scvi_rs::{Device, Scvi, Setup};
use std::path::PathBuf;

fn kang() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SCVI_RS_KANG_H5AD") {
        return Some(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        root.join("../shared/data/kang_ifnb_hvg2k.h5ad"),
        root.join("shared/data/kang_ifnb_hvg2k.h5ad"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[test]
fn twenty_epochs_on_kang_match_the_cpu() {
    let test = "twenty_epochs_on_kang_match_the_cpu";
    if gpu_or_skip(test).is_none() {
        return;
    }
    let Some(path) = kang() else {
        skip_gpu_test(
            test,
            "kang_ifnb_hvg2k.h5ad not found (set SCVI_RS_KANG_H5AD)",
        );
        return;
    };
    let data = load_dataset(&path, None).expect("read kang");
    let setup = Setup {
        batch_key: data.obs_column("stim").ok().map(|_| "stim".to_string()),
        labels_key: None,
    };
    let elbo = |device: Device, seed: u64| -> f64 {
        let mut m = Scvi::new(&data, setup.clone(), ModelConfig::default(), seed).expect("model");
        let cfg = TrainConfig {
            max_epochs: Some(20),
            seed,
            ..TrainConfig::default()
        };
        let t0 = std::time::Instant::now();
        m.train(&data, &cfg, device, &mut |_, _| {}).expect("train");
        let secs = t0.elapsed().as_secs_f64();
        let val = m.split.as_ref().expect("split").validation.clone();
        // Every model is evaluated by the CPU engine, so only the training differs.
        let e = m.elbo(&data, &val, Device::Cpu, 0).expect("elbo").elbo;
        let on_gpu = m
            .elbo(&data, &val, Device::Cuda(0), 0)
            .expect("gpu elbo")
            .elbo;
        println!(
            "{device:?} seed {seed}: held-out ELBO {e:.4} (evaluated on the GPU: {on_gpu:.4}), \
             training {secs:.1} s"
        );
        assert!(
            (e - on_gpu).abs() <= 1e-4 * e.abs(),
            "CPU and GPU evaluation of one model differ: {e} vs {on_gpu}"
        );
        e
    };
    let cpu = [elbo(Device::Cpu, 0), elbo(Device::Cpu, 1)];
    let gpu = [elbo(Device::Cuda(0), 0), elbo(Device::Cuda(0), 1)];
    let spread = (cpu[0] - cpu[1]).abs().max((gpu[0] - gpu[1]).abs());
    let (mc, mg) = ((cpu[0] + cpu[1]) / 2.0, (gpu[0] + gpu[1]) / 2.0);
    println!("CPU mean {mc:.4}, GPU mean {mg:.4}, seed spread {spread:.4}");
    assert!(
        (mc - mg).abs() <= spread + 1e-4 * mc.abs(),
        "held-out ELBO: GPU {mg:.4} vs CPU {mc:.4}, more than the seed spread {spread:.4}"
    );
}
