//! Monte Carlo draws from a trained model's posterior, batched for speed: a chunk of cells is
//! encoded once (the encoders are deterministic in inference mode), then many (cell, sample) rows
//! are decoded in one pass of the engine's decoder, the rows of one large minibatch. Memory is
//! bounded by the rows of one pass (`[R, G]` planes), never by cells x genes x samples.
//!
//! A draw is keyed by the cell's row in the data set, a `transform_batch` slot and the sample index
//! (`Stream::Posterior`, one Philox block run per sample), so the same seed gives the same draws
//! however the cells are chunked and whichever other cells are computed beside them.

use crate::batch::Minibatch;
use crate::data::SparseRows;
use crate::engine::{Engine, Generative, GenerativeOutputs, Posteriors};
use crate::error::{Error, Result};
use crate::model::{LatentDistribution, ModelConfig};
use crate::rng::{Philox, Stream};
use crate::train::{for_each_minibatch, Covariates};

/// Rows decoded per engine pass by default: `[R, G]` f32 planes of a few MB each at G = 2,000,
/// enough rows for the products to run near the GEMM's peak.
pub const ROWS_PER_PASS: usize = 1024;

/// Cells encoded per chunk when the samples of one cell are few.
pub const MAX_CELLS_PER_CHUNK: usize = 256;

/// One row to decode: a cell of the encoded chunk (its position in the chunk) and a sample index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub cell: usize,
    pub sample: u64,
}

/// The decoder's batch for a set of rows: each cell's own, or one `transform_batch` category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform {
    /// The batch code to decode with (None: the cell's observed batch).
    pub code: Option<u32>,
    /// The slot that keys the draws (distinct slots draw independent z).
    pub slot: u64,
}

impl Transform {
    /// Each cell's own batch, slot 0.
    pub const OBSERVED: Transform = Transform {
        code: None,
        slot: 0,
    };
}

/// The stream index of (cell, slot): cells below 2^40, slots below 2^16 (the stream's tag takes
/// the top byte).
fn draw_key(cell: usize, slot: u64) -> u64 {
    (cell as u64 & ((1 << 40) - 1)) | (slot << 40)
}

/// A model's posterior, sampled in chunks through an engine.
pub struct Sampler<'a> {
    engine: &'a mut dyn Engine,
    cfg: ModelConfig,
    rng: Philox,
    post: Posteriors,
    rows: Minibatch,
    z: Vec<f32>,
    library: Vec<f32>,
    eps: Vec<f64>,
    /// The decoder's outputs of the last [`decode`](Self::decode).
    pub out: Generative,
    /// The (cell, sample) of each row of the last decode.
    pub draws: Vec<Draw>,
}

impl<'a> Sampler<'a> {
    pub fn new(engine: &'a mut dyn Engine, cfg: &ModelConfig, seed: u64) -> Self {
        Sampler {
            engine,
            cfg: cfg.clone(),
            rng: Philox::new(seed),
            post: Posteriors::default(),
            rows: Minibatch::default(),
            z: Vec::new(),
            library: Vec::new(),
            eps: Vec::new(),
            out: Generative::default(),
            draws: Vec::new(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Encode a chunk of cells: their posteriors, for the decodes that follow.
    pub fn encode(&mut self, chunk: &Minibatch) -> Result<()> {
        self.engine.posteriors(chunk, &mut self.post)
    }

    /// The posteriors of the encoded chunk.
    pub fn posteriors(&self) -> &Posteriors {
        &self.post
    }

    /// Decode `draws` of the encoded `chunk`'s cells under `transform`, filling
    /// [`out`](Self::out); [`z`](Self::z) and [`library`](Self::library) hold each row's draw.
    pub fn decode(
        &mut self,
        chunk: &Minibatch,
        draws: &[Draw],
        transform: Transform,
        what: GenerativeOutputs,
    ) -> Result<()> {
        let l = self.cfg.n_latent;
        if let Some(t) = transform.code {
            if t as usize >= self.cfg.n_batch {
                return Err(Error::Config(format!(
                    "transform batch code {t} out of range (the model has {} batches)",
                    self.cfg.n_batch
                )));
            }
        }
        replicate_rows(&mut self.rows, chunk, draws, transform.code);
        let ln = self.cfg.latent_distribution == LatentDistribution::Ln;
        let latent_library = !self.cfg.use_observed_lib_size;
        let blocks_per_sample = l.div_ceil(2) as u64;
        self.z.resize(draws.len() * l, 0.0);
        self.library.resize(draws.len(), 0.0);
        self.eps.resize(l, 0.0);
        for (r, d) in draws.iter().enumerate() {
            let key = draw_key(chunk.cells[d.cell], transform.slot);
            let first = d.sample * blocks_per_sample;
            self.rng
                .fill_normal_at(Stream::Posterior, key, first, &mut self.eps[..l]);
            let (m, v) = (
                &self.post.z_mean[d.cell * l..(d.cell + 1) * l],
                &self.post.z_var[d.cell * l..(d.cell + 1) * l],
            );
            let zr = &mut self.z[r * l..(r + 1) * l];
            // As torch's Normal(m, sqrt v).sample() in f32: m + sqrt(v) eps.
            for k in 0..l {
                zr[k] = m[k] + v[k].sqrt() * self.eps[k] as f32;
            }
            if ln {
                crate::math::softmax::softmax_in_place(zr);
            }
            self.library[r] = if latent_library {
                let mut e = [0.0f64; 1];
                self.rng
                    .fill_normal_at(Stream::PosteriorLibrary, key, d.sample, &mut e);
                let (m, v) = (
                    self.post.library_mean[d.cell],
                    self.post.library_var[d.cell],
                );
                m + v.sqrt() * e[0] as f32
            } else {
                chunk.log_library[d.cell] as f32
            };
        }
        self.draws.clear();
        self.draws.extend_from_slice(draws);
        self.engine
            .generative(&self.rows, &self.z, &self.library, what, &mut self.out)
    }

    /// The decoder inputs z (`[R, L]`) of the last decode's rows.
    pub fn z(&self) -> &[f32] {
        &self.z[..self.draws.len() * self.cfg.n_latent]
    }

    /// The log libraries (`[R]`) of the last decode's rows.
    pub fn library(&self) -> &[f32] {
        &self.library[..self.draws.len()]
    }

    /// The decoder's batch code of row `r` of the last decode.
    pub fn row_batch(&self, r: usize) -> u32 {
        self.rows.batch[r]
    }
}

/// Rows of `dst`: for each draw, its cell's counts and codes from `src` (the batch code replaced by
/// `batch` when given).
fn replicate_rows(dst: &mut Minibatch, src: &Minibatch, draws: &[Draw], batch: Option<u32>) {
    dst.n_genes = src.n_genes;
    dst.cells.clear();
    dst.indptr.clear();
    dst.indices.clear();
    dst.values.clear();
    dst.batch.clear();
    dst.labels.clear();
    dst.log_library.clear();
    dst.indptr.push(0);
    for d in draws {
        let (idx, val) = src.row(d.cell);
        dst.indices.extend_from_slice(idx);
        dst.values.extend_from_slice(val);
        dst.indptr.push(dst.indices.len());
        dst.cells.push(src.cells[d.cell]);
        dst.batch.push(batch.unwrap_or(src.batch[d.cell]));
        dst.labels.push(src.labels[d.cell]);
        dst.log_library.push(src.log_library[d.cell]);
    }
}

/// Call `f(chunk)` on consecutive chunks of `cells` of the data set, `per_chunk` cells at a time, in
/// order, with each chunk's cells refused when one has no counts under an observed library
/// (its `log 0` library is undefined).
pub fn for_each_chunk(
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    per_chunk: usize,
    observed_library: bool,
    mut f: impl FnMut(&Minibatch) -> Result<()>,
) -> Result<()> {
    for_each_minibatch(x, cov, cells, per_chunk.max(1), |mb| {
        crate::interrupt::check()?;
        if observed_library {
            if let Some(i) = mb.log_library.iter().position(|l| !l.is_finite()) {
                return Err(Error::Data(format!(
                    "cell {} has zero total counts, so its observed library size log(0) is \
                     undefined; remove such cells first (scanpy: sc.pp.filter_cells(adata, \
                     min_counts=1))",
                    mb.cells[i]
                )));
            }
        }
        f(mb)
    })
}

/// Cells per chunk and draws per pass for `samples` draws per cell (and `slots` transform slots):
/// enough cells that a pass fills [`ROWS_PER_PASS`] rows.
pub fn chunking(samples: usize) -> usize {
    (ROWS_PER_PASS / samples.max(1)).clamp(1, MAX_CELLS_PER_CHUNK)
}

/// `draws` of the chunk's `n` cells, `samples` each, cell-major, cut into passes of at most
/// [`ROWS_PER_PASS`] rows; `f` sees each pass.
pub fn for_each_pass(
    n: usize,
    samples: usize,
    mut f: impl FnMut(&[Draw]) -> Result<()>,
) -> Result<()> {
    let mut draws = Vec::with_capacity(ROWS_PER_PASS);
    for cell in 0..n {
        for s in 0..samples as u64 {
            draws.push(Draw { cell, sample: s });
            if draws.len() == ROWS_PER_PASS {
                f(&draws)?;
                draws.clear();
            }
        }
    }
    if !draws.is_empty() {
        f(&draws)?;
    }
    Ok(())
}
