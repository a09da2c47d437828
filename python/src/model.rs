//! `Model`: the core's `Scvi` (new, train, latent representation, save, load) for the Python
//! package, every long call run through `run::run` (GIL released, Ctrl-C watched).

use crate::after;
use crate::data::Data;
use crate::errors::to_py;
use crate::run::run;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use scvi_rs::infer::de::{DeMode, DeOptions};
use scvi_rs::infer::marginal_ll::scvi_tools_mean;
use scvi_rs::infer::normalize::{LibrarySize, NormalizeOptions};
use scvi_rs::model::ModelConfig;
use scvi_rs::scvi::DeGroups;
use scvi_rs::train::{History, TrainConfig};
use scvi_rs::{Device, Scvi, Setup};
use std::path::PathBuf;

#[pyclass(module = "scvi_rs._core")]
pub struct Model {
    inner: Scvi,
}

fn json_err(e: serde_json::Error) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(e.to_string())
}

/// What every after-training call takes from Python: (cells or None for all, accelerator,
/// threads, seed).
type Ctx = (Option<Vec<usize>>, String, usize, u64);

/// The cells of `ctx`, checked, and how to run.
fn context(data: &scvi_rs::data::Dataset, ctx: Ctx) -> PyResult<(Vec<usize>, after::RunOn)> {
    let (cells, accelerator, threads, seed) = ctx;
    let run = after::RunOn {
        device: infer_device(&accelerator)?,
        threads,
        seed,
    };
    Ok((after::cells_of(data, cells)?, run))
}

/// The device of the after-training methods: the CPU engine runs them (the GPU engine does not
/// offer them yet), so "auto" is the CPU there; an explicit GPU is passed on (and says so).
fn infer_device(name: &str) -> PyResult<Device> {
    if name == "auto" {
        Ok(Device::Cpu)
    } else {
        device(name)
    }
}

/// "cpu", "gpu" / "cuda" (device 0), "cuda:N", or "auto" (a GPU when one works).
fn device(name: &str) -> PyResult<Device> {
    match name {
        "auto" => Ok(if scvi_rs::cuda::gpu_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let d: Device = name.parse().map_err(to_py)?;
            if let Err(why) = scvi_rs::cuda::availability() {
                return Err(PyRuntimeError::new_err(format!(
                    "accelerator='gpu' was asked for, but no GPU can be used: {why}; use \
                     accelerator='cpu' (or 'auto')"
                )));
            }
            Ok(d)
        }
    }
}

fn history_dict<'py>(py: Python<'py>, h: &History) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let col = |f: &dyn Fn(&scvi_rs::train::EpochRecord) -> Option<f64>| -> Vec<Option<f64>> {
        h.epochs.iter().map(f).collect()
    };
    d.set_item(
        "epoch",
        h.epochs.iter().map(|r| r.epoch).collect::<Vec<_>>(),
    )?;
    d.set_item("train_loss_epoch", col(&|r| Some(r.train_loss)))?;
    d.set_item("elbo_train", col(&|r| Some(r.elbo_train)))?;
    d.set_item(
        "reconstruction_loss_train",
        col(&|r| Some(r.reconstruction_loss_train)),
    )?;
    d.set_item("kl_local_train", col(&|r| Some(r.kl_local_train)))?;
    d.set_item("validation_loss", col(&|r| r.validation_loss))?;
    d.set_item("elbo_validation", col(&|r| r.elbo_validation))?;
    d.set_item(
        "reconstruction_loss_validation",
        col(&|r| r.reconstruction_loss_validation),
    )?;
    d.set_item("kl_local_validation", col(&|r| r.kl_local_validation))?;
    d.set_item("kl_weight", col(&|r| Some(r.kl_weight)))?;
    d.set_item("seconds", col(&|r| Some(r.seconds)))?;
    Ok(d)
}

#[pymethods]
impl Model {
    /// A new model for `data`: `config` is the model's JSON (`ModelConfig`), weights seeded.
    #[new]
    #[pyo3(signature = (data, batch_key, labels_key, config, seed))]
    fn new(
        data: &Data,
        batch_key: Option<String>,
        labels_key: Option<String>,
        config: &str,
        seed: u64,
    ) -> PyResult<Self> {
        let config: ModelConfig = serde_json::from_str(config).map_err(json_err)?;
        let setup = Setup {
            batch_key,
            labels_key,
        };
        let inner = Scvi::new(&data.inner, setup, config, seed).map_err(to_py)?;
        Ok(Model { inner })
    }

    /// Read a model directory (`scvi-rs train --out`, or `save`).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.allow_threads(|| Scvi::load(&path)).map_err(to_py)?;
        Ok(Model { inner })
    }

    /// Train (`config`: `TrainConfig` as JSON). `on_epoch(epoch, max_epochs, record)` is called
    /// with the GIL after every epoch. Returns whether a Ctrl-C stopped training after an epoch.
    #[pyo3(signature = (data, config, accelerator, threads, on_epoch=None))]
    fn train(
        &mut self,
        py: Python<'_>,
        data: &Data,
        config: &str,
        accelerator: &str,
        threads: usize,
        on_epoch: Option<PyObject>,
    ) -> PyResult<bool> {
        let cfg: TrainConfig = serde_json::from_str(config).map_err(json_err)?;
        let dev = device(accelerator)?;
        let inner = &mut self.inner;
        let ds = &data.inner;
        // Train a copy, so a run stopped mid-way (a second Ctrl-C, an error) leaves the model as
        // it was; a copy of the weights is small next to the data.
        let mut work = Scvi {
            meta: inner.meta.clone(),
            state: inner.state.clone(),
            history: History::default(),
            split: None,
        };
        let (_, interrupts) = run(py, threads, true, || {
            work.train(ds, &cfg, dev, &mut |r, max| {
                if let Some(cb) = &on_epoch {
                    Python::with_gil(|py| {
                        let rec = (r.train_loss, r.elbo_train, r.elbo_validation, r.seconds);
                        if let Err(e) = cb.call1(py, (r.epoch, max, rec)) {
                            // A failing progress display must not end the training.
                            e.print(py);
                        }
                    })
                }
            })
        })?;
        if interrupts >= 2 {
            // A second Ctrl-C that came as training stopped after the epoch anyway: still a stop
            // at once, as promised (the model stays as it was).
            return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
                "interrupted",
            ));
        }
        let interrupted = work.history.interrupted;
        *inner = work;
        Ok(interrupted)
    }

    /// The latent representation (`[n_cells, n_latent]`, float32) of `data`'s cells.
    #[pyo3(signature = (data, accelerator, threads, mc_samples))]
    fn latent<'py>(
        &self,
        py: Python<'py>,
        data: &Data,
        accelerator: &str,
        threads: usize,
        mc_samples: usize,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let dev = device(accelerator)?;
        let (z, _) = run(py, threads, false, || {
            self.inner
                .latent_representation(&data.inner, dev, mc_samples)
        })?;
        let n = data.inner.n_cells();
        PyArray1::from_vec(py, z).reshape([n, self.inner.config().n_latent])
    }

    /// Check `data` against the model (genes, categories): raises as the command line would.
    fn check_data(&self, data: &Data) -> PyResult<()> {
        self.inner.codes_for(&data.inner).map(|_| ()).map_err(to_py)
    }

    /// Write the model directory (an existing one is replaced only with `overwrite`, and only if
    /// scvi-rs wrote it).
    fn save(&self, py: Python<'_>, path: PathBuf, overwrite: bool) -> PyResult<()> {
        py.allow_threads(|| self.inner.save(&path, overwrite))
            .map_err(to_py)
    }

    /// model.json as a string: the configuration, setup keys, genes and categories.
    fn meta_json(&self) -> PyResult<String> {
        serde_json::to_string(&self.inner.meta).map_err(json_err)
    }

    /// The history's columns (scvi-tools' names).
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        history_dict(py, &self.inner.history)
    }

    /// (elbo, reconstruction error, kl_local) of the cells of `ctx`.
    fn elbo(&self, py: Python<'_>, data: &Data, ctx: Ctx) -> PyResult<(f64, f64, f64)> {
        let (cells, run) = context(&data.inner, ctx)?;
        after::elbo(py, &self.inner, &data.inner, &cells, run)
    }

    /// Each cell's marginal log-likelihood, or scvi-tools' mean of them.
    fn marginal_ll<'py>(
        &self,
        py: Python<'py>,
        data: &Data,
        ctx: Ctx,
        n_mc_samples: usize,
        return_mean: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (cells, run) = context(&data.inner, ctx)?;
        let ll = after::marginal_ll(py, &self.inner, &data.inner, &cells, n_mc_samples, run)?;
        if return_mean {
            Ok(scvi_tools_mean(&ll, 128).into_pyobject(py)?.into_any())
        } else {
            Ok(PyArray1::from_vec(py, ll).into_any())
        }
    }

    /// `[cells, genes]` normalized expression (mean over `n_samples` draws) and the genes' names;
    /// `library_size` None: each cell's own ("latent").
    #[allow(clippy::too_many_arguments)]
    fn normalized<'py>(
        &self,
        py: Python<'py>,
        data: &Data,
        ctx: Ctx,
        library_size: Option<f64>,
        n_samples: usize,
        transform_batch: Vec<String>,
        gene_list: Option<Vec<String>>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Vec<String>)> {
        let (cells, run) = context(&data.inner, ctx)?;
        let m = &self.inner;
        let genes = match &gene_list {
            Some(g) => Some(m.gene_indices(g, "gene_list").map_err(to_py)?),
            None => None,
        };
        let opts = NormalizeOptions {
            library_size: library_size.map_or(LibrarySize::Latent, LibrarySize::Fixed),
            n_samples,
            transform_batch: m.transform_batch_codes(&transform_batch).map_err(to_py)?,
            genes,
        };
        after::normalized(py, m, &data.inner, &cells, &opts, run)
    }

    /// Per comparison a dict: `group1`, `group2`, `order` (row order), `columns`.
    #[allow(clippy::too_many_arguments)]
    fn differential_expression<'py>(
        &self,
        py: Python<'py>,
        data: &Data,
        ctx: Ctx,
        groups: (String, Option<String>, Option<String>),
        mode: &str,
        delta_fdr: (f64, f64),
        batch_correction: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let (_, run) = context(&data.inner, ctx)?;
        let opts = DeOptions {
            mode: mode.parse::<DeMode>().map_err(to_py)?,
            delta: delta_fdr.0,
            fdr_target: delta_fdr.1,
            batch_correction,
            ..DeOptions::default()
        };
        let groups = DeGroups {
            groupby: groups.0,
            group1: groups.1,
            group2: groups.2,
        };
        after::differential_expression(py, &self.inner, &data.inner, groups, &opts, run)
    }

    /// Per draw, the CSR parts (indptr, indices, data) of the sampled counts.
    fn predictive<'py>(
        &self,
        py: Python<'py>,
        data: &Data,
        ctx: Ctx,
        n_samples: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let (cells, run) = context(&data.inner, ctx)?;
        after::predictive(py, &self.inner, &data.inner, &cells, n_samples, run)
    }

    /// Whether the model has been trained (or was loaded trained).
    #[getter]
    fn is_trained(&self) -> bool {
        self.inner.meta.train.is_some()
    }
}
