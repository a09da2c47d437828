//! Highly variable genes, scanpy's `highly_variable_genes(flavor="seurat_v3")` on raw counts,
//! computed in streaming passes so that it runs on data larger than memory.
//!
//! The algorithm, as scanpy 1.11 computes it (`_highly_variable_genes_seurat_v3`), per batch `b`
//! (all cells when there is no batch key), with `N` the cells of the batch:
//!
//! ```text
//! mean_g = sum_g / N,   var_g = (sumsq_g / N - mean_g^2) * (N / (N - 1))
//! fit   = loess(log10 mean_g, log10 var_g; span 0.3, degree 2), over the genes with var_g > 0
//! reg_std_g = sqrt(10^fit_g)   (1 for genes with var_g = 0)
//! clip_g    = reg_std_g * sqrt(N) + mean_g
//! x'_cg     = min(x_cg, clip_g)                                  (second pass over the counts)
//! norm_g    = (N mean_g^2 + sum_c x'^2_cg - 2 mean_g sum_c x'_cg) / ((N - 1) reg_std_g^2)
//! ```
//!
//! Genes are ranked by `norm_g` (descending) within each batch; a gene's rank is the median of its
//! ranks over the batches where it is among the top `n_top_genes` (`highly_variable_rank`), and
//! `highly_variable_nbatches` counts those batches. The chosen genes are the first `n_top_genes`
//! after a stable sort by rank (ascending, genes with no rank last), then by number of batches
//! (descending).
//!
//! - `loess`: the mean-variance trend, Cleveland's loess as `skmisc.loess` computes it;
//! - `argsort`: numpy's unstable argsort on AVX-512, which decides ties at rank `n_top_genes`;
//! - `seurat_v3`: the two streaming passes and the selection.
//!
//! With the loess to rounding and numpy's order among ties, the selection equals scanpy's exactly
//! (`tests/hvg.rs`: Kang et al. with and without a batch key).

mod argsort;
mod loess;
mod seurat_v3;

pub use argsort::argsort_numpy_avx512;
pub use loess::loess_fit;
pub use seurat_v3::{highly_variable_genes_seurat_v3, HvgResult, SeuratV3};
