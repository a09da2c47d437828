"""scvi-rs from Python: scvi-tools' ``SCVI`` API over the Rust engine.

    import anndata as ad, scvi_rs
    adata = ad.read_h5ad("data.h5ad")
    scvi_rs.SCVI.setup_anndata(adata, layer="counts", batch_key="sample")
    model = scvi_rs.SCVI(adata, n_latent=30, gene_likelihood="nb")
    model.train(max_epochs=100)
    adata.obsm["X_scVI"] = model.get_latent_representation()

The counts of an in-memory AnnData are read in place when they are a float32 CSR matrix with
int32 indices (scipy's usual layout); other layouts are converted a chunk of rows at a time; a
backed AnnData (``backed="r"``) is read by the Rust reader from its file. Training and inference
release the interpreter lock. Ctrl-C (or a notebook's interrupt) during ``train`` stops after the
epoch under way and keeps that epoch's model; a second Ctrl-C stops at once, raising
``KeyboardInterrupt`` and keeping the model as it was before ``train``.
"""

from ._settings import settings
from ._model import SCVI
from . import _core

__version__ = _core.__version__
__all__ = ["SCVI", "settings", "gpu_available"]


def gpu_available():
    """Whether a GPU (CUDA driver, NVRTC and cuBLAS) can be used."""
    return _core.gpu_available()
