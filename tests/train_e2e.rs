//! Training end to end through the library API on simulated data: the loss falls, the latent space
//! separates the simulated cell types and mixes the batches, and a saved model loads back to the
//! same latent representation.

use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::infer::metrics::{knn_batch_mixing, knn_label_accuracy};
use scvi_rs::model::ModelConfig;
use scvi_rs::train::TrainConfig;
use scvi_rs::{Device, Scvi, Setup};

#[test]
fn loss_falls_and_latent_separates_cell_types() {
    let sim = SimConfig {
        n_cells: 1200,
        n_genes: 300,
        n_batches: 2,
        n_cell_types: 4,
        seed: 11,
        ..SimConfig::default()
    };
    let data = simulate(&sim);
    let setup = Setup {
        batch_key: Some("batch".into()),
        labels_key: Some("cell_type".into()),
    };
    let mut model = Scvi::new(&data, setup, ModelConfig::default(), 0).unwrap();
    // Before training: how well does the untrained encoder separate cell types?
    let z0 = model.latent_representation(&data, Device::Cpu, 1).unwrap();
    let codes = model.codes_for(&data).unwrap();
    let acc0 = knn_label_accuracy(&z0, 10, &codes.labels, 15, 600);

    let cfg = TrainConfig {
        max_epochs: Some(40),
        seed: 1,
        ..TrainConfig::default()
    };
    model
        .train(&data, &cfg, Device::Cpu, &mut |_, _| {})
        .unwrap();
    let h = &model.history.epochs;
    assert_eq!(h.len(), 40);
    let first = h[0].elbo_train;
    let last = h.last().unwrap().elbo_train;
    assert!(
        last < 0.95 * first,
        "elbo_train did not fall enough: {first} -> {last}"
    );
    let (v0, v1) = (
        h[0].elbo_validation.unwrap(),
        h.last().unwrap().elbo_validation.unwrap(),
    );
    assert!(v1 < v0, "elbo_validation did not fall: {v0} -> {v1}");
    assert!((h[10].kl_weight - 10.0 / 400.0).abs() < 1e-12, "KL warm-up");

    let z = model.latent_representation(&data, Device::Cpu, 1).unwrap();
    let acc = knn_label_accuracy(&z, 10, &codes.labels, 15, 600);
    let mix = knn_batch_mixing(&z, 10, &codes.batch, 15, 600);
    eprintln!("15-NN cell-type accuracy {acc0:.3} -> {acc:.3}; batch mixing {mix:.3}");
    assert!(acc > 0.9, "cell types not separated: accuracy {acc}");
    assert!(mix > 0.5, "batches not mixed: {mix}");

    // Save, load, embed again: the same numbers.
    let dir = std::env::temp_dir().join(format!("scvi-rs-e2e-{}", std::process::id()));
    model.save(&dir, true).unwrap();
    let loaded = Scvi::load(&dir).unwrap();
    assert_eq!(
        loaded.latent_representation(&data, Device::Cpu, 1).unwrap(),
        z
    );
    assert_eq!(loaded.split.as_ref().unwrap().validation.len(), 120);
    let elbo = loaded
        .elbo(
            &data,
            &loaded.split.clone().unwrap().validation,
            Device::Cpu,
            0,
        )
        .unwrap();
    assert!(
        elbo.elbo < 0.0 && (-elbo.elbo - v1).abs() < 0.05 * v1,
        "held-out ELBO {} vs history {v1}",
        elbo.elbo
    );
    std::fs::remove_dir_all(&dir).ok();
}
