//! The gentle stop embedders use (`interrupt::request_after_epoch`, the Python package's first
//! Ctrl-C): training ends after the epoch under way with the model of that epoch, the same model a
//! run asked for that many epochs gives, bit for bit. Its own test binary: the flag is global.

use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::model::ModelConfig;
use scvi_rs::train::TrainConfig;
use scvi_rs::{Device, Scvi, Setup};

#[test]
fn stop_after_epoch_leaves_the_model_of_that_epoch() {
    let data = simulate(&SimConfig {
        n_cells: 300,
        n_genes: 60,
        n_batches: 2,
        seed: 5,
        ..SimConfig::default()
    });
    let setup = Setup {
        batch_key: Some("batch".into()),
        labels_key: None,
    };
    let train = |epochs: usize, stop_at: Option<usize>| {
        let mut m = Scvi::new(&data, setup.clone(), ModelConfig::default(), 3).unwrap();
        let cfg = TrainConfig {
            max_epochs: Some(epochs),
            seed: 3,
            ..TrainConfig::default()
        };
        m.train(&data, &cfg, Device::Cpu, &mut |r, _| {
            if Some(r.epoch) == stop_at {
                scvi_rs::interrupt::request_after_epoch();
            }
        })
        .unwrap();
        m
    };
    let stopped = train(10, Some(2));
    assert!(stopped.history.interrupted);
    assert_eq!(stopped.history.epochs.len(), 3);
    // The request was taken: the next run is not stopped by it.
    let full = train(3, None);
    assert!(!full.history.interrupted);
    assert_eq!(full.history.epochs.len(), 3);
    assert_eq!(stopped.state.params, full.state.params, "weights differ");
    assert_eq!(stopped.state.buffers, full.state.buffers, "buffers differ");
}
