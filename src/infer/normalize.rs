//! `get_normalized_expression`: per cell, the mean over `n_samples` posterior draws and over the
//! `transform_batch` categories of `px_scale * library_size`, or of `px_rate = exp(l) px_scale`
//! with `library_size = "latent"`, for all genes or a subset (`gene_list`). The rows come out
//! chunk by chunk in the order of the cells, so memory is one chunk's rows, whatever the number of
//! cells, genes and samples.

use super::posterior::{chunking, for_each_chunk, for_each_pass, Sampler, Transform};
use crate::data::SparseRows;
use crate::engine::GenerativeOutputs;
use crate::error::{Error, Result};
use crate::train::Covariates;

/// What the rows are scaled to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LibrarySize {
    /// `px_scale * size` (scvi-tools' default is 1: frequencies).
    Fixed(f64),
    /// `px_rate`: each cell's own (observed or latent) library.
    Latent,
}

impl std::str::FromStr for LibrarySize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "latent" {
            return Ok(LibrarySize::Latent);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(LibrarySize::Fixed(v)),
            _ => Err(Error::Config(format!(
                "--library-size must be a positive number or 'latent', not '{s}'"
            ))),
        }
    }
}

/// `get_normalized_expression`'s options.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizeOptions {
    pub library_size: LibrarySize,
    /// Posterior draws per cell, averaged (`return_mean=True`).
    pub n_samples: usize,
    /// Batch codes to decode with, averaged; empty: each cell's own batch.
    pub transform_batch: Vec<u32>,
    /// Gene columns to return (model order), or None for all.
    pub genes: Option<Vec<usize>>,
}

impl Default for NormalizeOptions {
    fn default() -> Self {
        NormalizeOptions {
            library_size: LibrarySize::Fixed(1.0),
            n_samples: 1,
            transform_batch: Vec::new(),
            genes: None,
        }
    }
}

impl NormalizeOptions {
    pub fn validate(&self, n_genes: usize, n_batch: usize) -> Result<()> {
        if self.n_samples == 0 {
            return Err(Error::Config("--n-samples must be at least 1".into()));
        }
        if let Some(&t) = self
            .transform_batch
            .iter()
            .find(|&&t| t as usize >= n_batch)
        {
            return Err(Error::Config(format!(
                "transform batch code {t} out of range (the model has {n_batch} batches)"
            )));
        }
        if let Some(g) = &self.genes {
            if g.is_empty() {
                return Err(Error::Config("the gene list selects no genes".into()));
            }
            if let Some(&j) = g.iter().find(|&&j| j >= n_genes) {
                return Err(Error::Config(format!(
                    "gene column {j} out of range ({n_genes} genes)"
                )));
            }
        }
        Ok(())
    }

    /// The decodes one draw of a cell takes: one per category (or the observed batch).
    pub fn transforms(&self) -> Vec<Transform> {
        if self.transform_batch.is_empty() {
            return vec![Transform::OBSERVED];
        }
        self.transform_batch
            .iter()
            .enumerate()
            .map(|(k, &t)| Transform {
                code: Some(t),
                slot: k as u64,
            })
            .collect()
    }
}

/// The normalized expression of `cells`, handed to `sink(first, rows)` chunk by chunk: `rows` is
/// `[n, n_out]` row-major for the cells `first..first + n` of `cells`, `n_out` the number of genes
/// returned.
pub fn normalized_expression(
    sampler: &mut Sampler,
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    opts: &NormalizeOptions,
    sink: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
) -> Result<()> {
    let cfg = sampler.config().clone();
    let g = cfg.n_input;
    opts.validate(g, cfg.n_batch)?;
    let all: Vec<usize>;
    let genes: &[usize] = match &opts.genes {
        Some(v) => v,
        None => {
            all = (0..g).collect();
            &all
        }
    };
    let n_out = genes.len();
    let transforms = opts.transforms();
    let per_chunk = chunking(opts.n_samples * transforms.len());
    let denom = (opts.n_samples * transforms.len()) as f64;
    let mut acc: Vec<f64> = Vec::new();
    let mut rows: Vec<f32> = Vec::new();
    let mut first = 0usize;
    for_each_chunk(
        x,
        cov,
        cells,
        per_chunk,
        cfg.use_observed_lib_size,
        |chunk| {
            sampler.encode(chunk)?;
            let n = chunk.len();
            acc.clear();
            acc.resize(n * n_out, 0.0);
            for t in &transforms {
                for_each_pass(n, opts.n_samples, |draws| {
                    sampler.decode(chunk, draws, *t, GenerativeOutputs::Scale)?;
                    let (scale, lib) = (&sampler.out.px_scale, sampler.library());
                    for (r, d) in draws.iter().enumerate() {
                        // px_rate = exp(l) px_scale, in f32 as torch computes it.
                        let row = &scale[r * g..(r + 1) * g];
                        let dst = &mut acc[d.cell * n_out..(d.cell + 1) * n_out];
                        match opts.library_size {
                            LibrarySize::Fixed(size) => {
                                for (a, &j) in dst.iter_mut().zip(genes) {
                                    *a += row[j] as f64 * size;
                                }
                            }
                            LibrarySize::Latent => {
                                let e = lib[r].exp();
                                for (a, &j) in dst.iter_mut().zip(genes) {
                                    *a += (e * row[j]) as f64;
                                }
                            }
                        }
                    }
                    Ok(())
                })?;
            }
            rows.clear();
            rows.extend(acc.iter().map(|&a| (a / denom) as f32));
            sink(first, &rows)?;
            first += n;
            Ok(())
        },
    )
}
