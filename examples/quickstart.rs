//! The library API in a few lines (the README shows the same): read data, set up, train, embed, save.
//! `cargo run --release --example quickstart -- data.h5ad batch_key`; with no arguments it simulates.

use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::model::ModelConfig;
use scvi_rs::store::load_dataset;
use scvi_rs::train::TrainConfig;
use scvi_rs::{Device, Scvi, Setup};
use std::path::Path;

fn main() -> scvi_rs::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (data, batch_key) = match args.get(1) {
        Some(path) => (load_dataset(Path::new(path), None)?, args.get(2).cloned()),
        None => (simulate(&SimConfig::default()), Some("batch".to_string())),
    };
    let setup = Setup {
        batch_key,
        labels_key: None,
    };
    let mut model = Scvi::new(&data, setup, ModelConfig::default(), 0)?;
    let train = TrainConfig {
        max_epochs: Some(20),
        ..TrainConfig::default()
    };
    model.train(&data, &train, Device::Cpu, &mut |epoch, max| {
        eprintln!(
            "epoch {}/{max}: elbo_train {:.2}",
            epoch.epoch + 1,
            epoch.elbo_train
        )
    })?;
    let z = model.latent_representation(&data, Device::Cpu, 5000)?; // n_cells x 10, row-major
    println!("latent: {} values; first cell {:?}", z.len(), &z[..10]);
    model.save(Path::new("quickstart-model"), true)
}
