//! The model's after-training methods, scvi-tools' names and definitions (see `crate::infer` for
//! the exact quantities): [`Scvi::evaluate`] (`get_elbo`, `get_reconstruction_error`,
//! `get_marginal_ll`), [`Scvi::normalized_expression`] (`get_normalized_expression`),
//! [`Scvi::differential_expression`], [`Scvi::posterior_predictive_sample`]. Each takes the data
//! (checked against the model: genes, categories), the device and a seed; the same seed gives the
//! same result.

use super::{CellCodes, Device, Scvi};
use crate::data::{CsrMatrix, Dataset};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::infer::de::{self, Comparison, DeOptions, DeResult};
use crate::infer::marginal_ll::{self, LibraryPrior};
use crate::infer::normalize::{self, NormalizeOptions};
use crate::infer::posterior::Sampler;
use crate::infer::predictive;
use crate::train::{self, Covariates};
use serde::Serialize;

/// `evaluate`'s figures, with scvi-tools' signs (see `crate::infer`): `elbo` and `marginal_ll`
/// are log-likelihood bounds and estimates (negative, higher is better); `reconstruction_error`
/// and `kl_local` are per-cell means of losses (positive).
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub n_cells: usize,
    pub elbo: f64,
    pub reconstruction_error: f64,
    pub kl_local: f64,
    pub marginal_ll: f64,
    pub n_mc_samples: usize,
}

/// Which cells `differential_expression` compares: `group1` against `group2` (or against every
/// other cell, "Rest"), or every group of `groupby` in turn against the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeGroups {
    pub groupby: String,
    pub group1: Option<String>,
    pub group2: Option<String>,
}

impl Scvi {
    /// An engine for inference, the data's cell codes and their covariates.
    fn infer_engine(
        &self,
        data: &Dataset,
        device: Device,
        seed: u64,
    ) -> Result<(Box<dyn Engine>, CellCodes)> {
        let codes = self.codes_for(data)?;
        let engine = self.engine(device, seed, train::AdamConfig::default())?;
        Ok((engine, codes))
    }

    /// The latent library's prior (latent library only).
    fn library_prior(&self) -> Option<LibraryPrior<'_>> {
        let layout = &self.state.layout;
        Some(LibraryPrior {
            means: self.state.buffer(layout.library_log_means?),
            vars: self.state.buffer(layout.library_log_vars?),
        })
    }

    /// `get_marginal_ll(indices=cells, n_mc_samples, return_mean=False)`: each cell's marginal
    /// log-likelihood estimate, in the order of `cells`; `progress(done)` after each chunk.
    pub fn marginal_ll(
        &self,
        data: &Dataset,
        cells: &[usize],
        n_mc_samples: usize,
        device: Device,
        seed: u64,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f64>> {
        check_cells(data, cells)?;
        let (mut engine, codes) = self.infer_engine(data, device, seed)?;
        let mut sampler = Sampler::new(engine.as_mut(), self.config(), seed);
        marginal_ll::marginal_ll(
            &mut sampler,
            data.counts.as_ref(),
            &codes.covariates(),
            cells,
            n_mc_samples,
            self.library_prior(),
            progress,
        )
    }

    /// `get_elbo()`, `get_reconstruction_error()`, the mean KL and `get_marginal_ll(n_mc_samples)`
    /// of `cells`, averaged as scvi-tools averages them.
    pub fn evaluate(
        &self,
        data: &Dataset,
        cells: &[usize],
        n_mc_samples: usize,
        device: Device,
        seed: u64,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Evaluation> {
        check_cells(data, cells)?;
        let e = self.elbo(data, cells, device, seed)?;
        let ll = self.marginal_ll(data, cells, n_mc_samples, device, seed, progress)?;
        Ok(Evaluation {
            n_cells: cells.len(),
            elbo: e.elbo,
            reconstruction_error: e.reconstruction_loss,
            kl_local: e.kl_local,
            marginal_ll: marginal_ll::scvi_tools_mean(&ll, 128),
            n_mc_samples,
        })
    }

    /// `get_normalized_expression(indices=cells, ...)`: the rows of `cells` go to
    /// `sink(first, rows)` chunk by chunk (`[n, n_genes_out]` row-major, for `cells[first..]`).
    pub fn normalized_expression(
        &self,
        data: &Dataset,
        cells: &[usize],
        opts: &NormalizeOptions,
        device: Device,
        seed: u64,
        sink: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        check_cells(data, cells)?;
        let (mut engine, codes) = self.infer_engine(data, device, seed)?;
        let mut sampler = Sampler::new(engine.as_mut(), self.config(), seed);
        normalize::normalized_expression(
            &mut sampler,
            data.counts.as_ref(),
            &codes.covariates(),
            cells,
            opts,
            sink,
        )
    }

    /// [`normalized_expression`](Self::normalized_expression) of every cell as one matrix
    /// (`[n_cells, n_genes_out]`).
    pub fn normalized_expression_matrix(
        &self,
        data: &Dataset,
        opts: &NormalizeOptions,
        device: Device,
        seed: u64,
    ) -> Result<Vec<f32>> {
        let cells: Vec<usize> = (0..data.n_cells()).collect();
        let mut out = Vec::new();
        self.normalized_expression(data, &cells, opts, device, seed, &mut |_, rows| {
            out.extend_from_slice(rows);
            Ok(())
        })?;
        Ok(out)
    }

    /// `differential_expression(groupby, group1, group2, mode, delta, batch_correction,
    /// fdr_target)`: one table per comparison (one for a `group1`, one per group of `groupby`
    /// without it), each with scvi-tools' columns and row order.
    pub fn differential_expression(
        &self,
        data: &Dataset,
        groups: &DeGroups,
        opts: &DeOptions,
        device: Device,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<DeResult>> {
        opts.validate()?;
        let comparisons = self.comparisons(data, groups)?;
        let (mut engine, codes) = self.infer_engine(data, device, seed)?;
        let cov: Covariates = codes.covariates();
        let mut sampler = Sampler::new(engine.as_mut(), self.config(), seed);
        let mut out = Vec::with_capacity(comparisons.len());
        for (k, cmp) in comparisons.iter().enumerate() {
            progress(k, comparisons.len());
            out.push(de::compare(
                &mut sampler,
                data.counts.as_ref(),
                &cov,
                cmp,
                opts,
                self.config().n_batch,
                k as u64,
                seed,
            )?);
        }
        progress(comparisons.len(), comparisons.len());
        Ok(out)
    }

    /// The comparisons `groups` asks for, with their cells; errors name the column and the groups
    /// it has.
    pub fn comparisons(&self, data: &Dataset, groups: &DeGroups) -> Result<Vec<Comparison>> {
        let key = &groups.groupby;
        let (codes, names) = data
            .obs_column(key)?
            .to_categorical(key)
            .map_err(|e| Error::Data(format!("{}: {e}", data.source)))?;
        let find = |g: &str, flag: &str| -> Result<u32> {
            names
                .iter()
                .position(|n| n == g)
                .map(|i| i as u32)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{flag} '{g}' is not a group of obs column '{key}' in {} (groups: {})",
                        data.source,
                        names.join(", ")
                    ))
                })
        };
        let cells_of =
            |c: u32| -> Vec<usize> { (0..codes.len()).filter(|&i| codes[i] == c).collect() };
        let g2 = match &groups.group2 {
            Some(g) => Some((g.clone(), cells_of(find(g, "--group2")?))),
            None => None,
        };
        let group1: Vec<u32> = match &groups.group1 {
            Some(g) => vec![find(g, "--group1")?],
            None if names.len() < 2 => {
                return Err(Error::Config(format!(
                    "obs column '{key}' of {} has a single group ({}); differential expression \
                     needs two",
                    data.source,
                    names.join(", ")
                )))
            }
            None => (0..names.len() as u32).collect(),
        };
        let mut out = Vec::new();
        for c in group1 {
            let cells1 = cells_of(c);
            let (group2, cells2) = match &g2 {
                Some((n, cells)) => (n.clone(), cells.clone()),
                None => (
                    "Rest".to_string(),
                    (0..codes.len()).filter(|&i| codes[i] != c).collect(),
                ),
            };
            for (name, cells) in [(&names[c as usize], &cells1), (&group2, &cells2)] {
                if cells.is_empty() {
                    return Err(Error::Data(format!(
                        "group '{name}' of obs column '{key}' in {} has no cells",
                        data.source
                    )));
                }
            }
            out.push(Comparison {
                group1: names[c as usize].clone(),
                group2,
                cells1,
                cells2,
            });
        }
        Ok(out)
    }

    /// `posterior_predictive_sample(indices=cells, n_samples)`: for each draw `s` the sampled
    /// counts of `cells[first..]` go to `sink(s, first, rows)` as CSR rows over the model's genes.
    pub fn posterior_predictive_sample(
        &self,
        data: &Dataset,
        cells: &[usize],
        n_samples: usize,
        device: Device,
        seed: u64,
        sink: &mut dyn FnMut(usize, usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        check_cells(data, cells)?;
        let (mut engine, codes) = self.infer_engine(data, device, seed)?;
        let mut sampler = Sampler::new(engine.as_mut(), self.config(), seed);
        predictive::posterior_predictive(
            &mut sampler,
            data.counts.as_ref(),
            &codes.covariates(),
            cells,
            n_samples,
            self.config().gene_likelihood,
            seed,
            sink,
        )
    }

    /// The batch codes of `transform_batch` category names; an unknown name is an error listing
    /// the model's batches.
    pub fn transform_batch_codes(&self, names: &[String]) -> Result<Vec<u32>> {
        let cats = &self.meta.batch_categories;
        names
            .iter()
            .map(|n| {
                cats.iter()
                    .position(|c| c == n)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "--transform-batch '{n}' is not a batch the model was trained on \
                         (batches{}: {})",
                            self.meta
                                .setup
                                .batch_key
                                .as_ref()
                                .map(|k| format!(" of '{k}'"))
                                .unwrap_or_default(),
                            cats.join(", ")
                        ))
                    })
            })
            .collect()
    }

    /// The model's columns of `genes` (scvi-tools' `gene_list`), in the model's order (as
    /// scvi-tools returns them); genes the model lacks are an error naming them and `list_name`.
    pub fn gene_indices(&self, genes: &[String], list_name: &str) -> Result<Vec<usize>> {
        let mut idx = crate::data::genes::resolve_genes(
            genes,
            &self.meta.genes,
            &[],
            list_name,
            "the model",
        )?;
        idx.sort_unstable();
        Ok(idx)
    }
}

/// At least one cell, all in range.
fn check_cells(data: &Dataset, cells: &[usize]) -> Result<()> {
    if cells.is_empty() {
        return Err(Error::Data(format!(
            "{}: no cells to compute on",
            data.source
        )));
    }
    if let Some(&c) = cells.iter().find(|&&c| c >= data.n_cells()) {
        return Err(Error::Data(format!(
            "{}: cell {c} is beyond its {} cells",
            data.source,
            data.n_cells()
        )));
    }
    Ok(())
}
