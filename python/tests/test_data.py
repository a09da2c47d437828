"""Data in: a float32 CSR matrix is read in place (its buffers are borrowed; the process's peak
memory does not grow by the matrix's size); other layouts are converted to the same numbers."""

import os

import numpy as np
import pytest
import scipy.sparse as sp

import scvi_rs
from scvi_rs import _core
from scvi_rs._data import to_data
from conftest import simulated, skip


def test_csr_buffers_are_borrowed_not_copied():
    adata = simulated()
    x = adata.X
    data = to_data(adata, None, ["batch"])
    assert data.borrowed_addresses == (x.indptr.ctypes.data, x.indices.ctypes.data, x.data.ctypes.data)
    # int64 offsets (scipy's choice for large matrices) are borrowed too.
    x.indptr = x.indptr.astype(np.int64)
    data = to_data(adata, None, [])
    assert data.borrowed_addresses[0] == x.indptr.ctypes.data


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def test_training_on_a_large_csr_matrix_does_not_copy_it():
    """~240 MB of CSR buffers: training a step and embedding add far less than that at peak."""
    if not os.path.exists("/proc/self/clear_refs"):
        skip("no /proc/self/clear_refs to reset the peak memory")
    n_cells, n_genes, per_row = 30_000, 2_000, 1_000
    rng = np.random.default_rng(0)
    indptr = np.arange(0, (n_cells + 1) * per_row, per_row, dtype=np.int64)
    # Columns strictly increasing within each row: 64 sorted samples without repeats, in turn.
    indices = np.sort(
        np.stack([rng.choice(n_genes, per_row, replace=False) for _ in range(64)]), axis=1
    )[np.arange(n_cells) % 64].astype(np.int32).ravel()
    values = rng.integers(1, 5, n_cells * per_row).astype(np.float32)
    x = sp.csr_matrix((values, indices, indptr), shape=(n_cells, n_genes))
    size_kib = (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) // 1024
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
                       var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    scvi_rs.SCVI.setup_anndata(adata)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _rss_kib("VmRSS")
    model = scvi_rs.SCVI(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=1, max_steps=2, train_size=0.99, accelerator="cpu", progress_bar=False)
    grown = _rss_kib("VmHWM") - before
    print(f"matrix {size_kib / 1024:.0f} MiB; peak grew by {grown / 1024:.0f} MiB")
    assert grown < size_kib * 0.35, f"peak grew by {grown} KiB for a {size_kib} KiB matrix"


@pytest.mark.parametrize("layout", ["dense", "csc", "float64", "unsorted"])
def test_other_layouts_are_converted_to_the_same_numbers(layout):
    adata = simulated(n_cells=200, n_genes=30)
    ref = to_data(adata, None, [])
    assert ref.borrowed_addresses is not None
    x = adata.X
    if layout == "dense":
        adata.X = x.toarray()
    elif layout == "csc":
        adata.X = x.tocsc()
    elif layout == "float64":
        adata.X = x.astype(np.float64)
    else:
        y = x.copy()
        order = np.arange(y.indptr[1] - y.indptr[0])[::-1]
        y.indices[: len(order)] = y.indices[: len(order)][order]
        y.data[: len(order)] = y.data[: len(order)][order]
        y.has_sorted_indices = False
        adata.X = y
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    m = scvi_rs.SCVI(adata)
    m.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    z = m.get_latent_representation()
    ref_adata = simulated(n_cells=200, n_genes=30)
    scvi_rs.SCVI.setup_anndata(ref_adata, batch_key="batch")
    r = scvi_rs.SCVI(ref_adata)
    r.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    assert np.array_equal(z, r.get_latent_representation())


def test_layers_and_other_adata_with_categories_mapped_by_name():
    adata = simulated(n_cells=300, n_genes=30)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 0.5  # not what is trained on
    scvi_rs.SCVI.setup_anndata(adata, layer="counts", batch_key="batch")
    m = scvi_rs.SCVI(adata)
    m.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    z = m.get_latent_representation()
    # The same cells with the batch categories in another order: mapped by name.
    other = adata.copy()
    other.obs["batch"] = other.obs["batch"].cat.reorder_categories(["b1", "b0"])
    assert np.array_equal(m.get_latent_representation(other), z)
    assert np.array_equal(m.get_latent_representation(indices=[5, 2]), z[[5, 2]])


def test_gpu_available_is_a_bool():
    assert isinstance(_core.gpu_available(), bool)
