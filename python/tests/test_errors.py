"""Every bad input of the command line's list (tests/cli.rs) arrives as a Python exception with the
command line's message, never a crash; plus the Python-only ones (settings, arguments)."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import scvi_rs
from scvi_rs import _core
from conftest import cli, fixture, simulated


def _small():
    return ad.read_h5ad(fixture("cli", "small.h5ad"))


def _trained(tmp):
    adata = _small()
    scvi_rs.SCVI.setup_anndata(adata, batch_key="stim")
    m = scvi_rs.SCVI(adata)
    m.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    return m


def test_missing_files_and_keys():
    with pytest.raises(FileNotFoundError, match="/nonexistent/x.h5ad"):
        scvi_rs.SCVI.load("/nonexistent/x.h5ad", _small())
    with pytest.raises(KeyError, match="nope.*stim"):
        scvi_rs.SCVI.setup_anndata(_small(), batch_key="nope")
    with pytest.raises(KeyError, match="nope.*counts"):
        scvi_rs.SCVI.setup_anndata(_small(), layer="nope")
    # A backed AnnData: the Rust reader's own messages.
    backed = ad.read_h5ad(fixture("cli", "small.h5ad"), backed="r")
    with pytest.raises(KeyError, match="small.h5ad.*nope.*stim"):
        scvi_rs.SCVI.setup_anndata(backed, batch_key="nope")


@pytest.mark.parametrize("value,needle", [(-1.0, "negative"), (np.nan, "NaN"), (np.inf, "infinite")])
def test_bad_values_name_the_layer_cell_and_gene(value, needle):
    adata = simulated(n_cells=30, n_genes=10)
    x = adata.X.toarray()
    x[7, 3] = value
    adata.layers["bad"] = sp.csr_matrix(x)
    scvi_rs.SCVI.setup_anndata(adata, layer="bad")
    with pytest.raises(ValueError, match=f"layers/bad.*{needle}.*cell 7, gene 3"):
        scvi_rs.SCVI(adata)


@pytest.mark.parametrize("layer,needle", [("negative", "negative"), ("nan", "NaN"), ("inf", "infinite")])
def test_bad_values_in_a_file_read_by_the_rust_reader(layer, needle):
    """What a backed AnnData goes through (this fixture's COO layer is one anndata cannot open)."""
    with pytest.raises(ValueError, match=f"bad_values.h5ad.*layers/{layer}.*{needle}"):
        _core.Data.from_file(fixture("h5ad", "bad_values.h5ad"), layer)


def test_non_integer_counts_warn_as_scvi_tools_does():
    adata = simulated(n_cells=30, n_genes=10)
    adata.X = adata.X * 0.5
    scvi_rs.SCVI.setup_anndata(adata)
    with pytest.warns(UserWarning, match="non-integer"):
        m = scvi_rs.SCVI(adata)
    m.train(max_epochs=1, batch_size=4, accelerator="cpu", progress_bar=False)


def test_zero_count_cell_is_named():
    adata = ad.read_h5ad(fixture("cli", "zero_cell.h5ad"))
    scvi_rs.SCVI.setup_anndata(adata)
    m = scvi_rs.SCVI(adata)
    with pytest.raises(ValueError, match="cell_007.*zero total counts"):
        m.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    assert not m.is_trained


def test_bad_options(tmp):
    adata = _small()
    scvi_rs.SCVI.setup_anndata(adata, batch_key="stim")
    m = scvi_rs.SCVI(adata)
    with pytest.raises(ValueError, match="batch_size"):
        m.train(max_epochs=1, batch_size=1, accelerator="cpu")
    with pytest.raises(ValueError, match="max_epochs"):
        m.train(max_epochs=0, accelerator="cpu")
    with pytest.raises(ValueError, match="tpu"):
        m.train(max_epochs=1, accelerator="tpu")
    with pytest.raises(ValueError, match="dispersion"):
        scvi_rs.SCVI(adata, dispersion="per-cell")
    with pytest.raises(ValueError, match="dropout_rate"):
        scvi_rs.SCVI(adata, dropout_rate=1.5)
    with pytest.raises(ValueError, match="settings.seed"):
        scvi_rs.settings.seed = -1
    with pytest.raises(ValueError, match="not been set up"):
        scvi_rs.SCVI(simulated())


def test_gpu_without_a_gpu_is_a_clear_error():
    if scvi_rs.gpu_available():
        pytest.skip("a GPU is available here")
    adata = _small()
    scvi_rs.SCVI.setup_anndata(adata)
    m = scvi_rs.SCVI(adata)
    with pytest.raises(RuntimeError, match="accelerator='gpu'.*no GPU"):
        m.train(max_epochs=1, accelerator="gpu", progress_bar=False)


def test_data_the_model_does_not_fit(tmp):
    m = _trained(tmp)
    other = ad.read_h5ad(fixture("cli", "other_genes.h5ad"))
    with pytest.raises(ValueError, match="genes.*gene_05"):
        m.get_latent_representation(other)
    new = ad.read_h5ad(fixture("cli", "new_batch.h5ad"))
    with pytest.raises(ValueError, match="NEW.*stim"):
        m.get_latent_representation(new)


def test_outputs_are_never_overwritten_without_overwrite(tmp):
    m = _trained(tmp)
    m.save(tmp / "model")
    before = (tmp / "model" / "model.safetensors").read_bytes()
    with pytest.raises(Exception, match="already exists"):
        m.save(tmp / "model")
    assert (tmp / "model" / "model.safetensors").read_bytes() == before
    m.save(tmp / "model", overwrite=True)
    # A directory scvi-rs did not write is never replaced, even with overwrite.
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception):
        m.save(tmp / "mine", overwrite=True)
    assert (tmp / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(FileNotFoundError, match="nomodel"):
        scvi_rs.SCVI.load(tmp / "nomodel", _small())
    with pytest.raises(FileNotFoundError, match="model.json"):
        scvi_rs.SCVI.load(tmp / "mine", _small())


def test_methods_not_there_yet_name_themselves(tmp):
    m = _trained(tmp)
    with pytest.raises(NotImplementedError, match="from_scvi_tools"):
        scvi_rs.SCVI.from_scvi_tools(None)
    with pytest.raises(NotImplementedError, match="give_mean=False"):
        m.get_latent_representation(give_mean=False)
    with pytest.raises(NotImplementedError, match="size_factor_key"):
        scvi_rs.SCVI.setup_anndata(_small(), size_factor_key="x")


def test_missing_category_values_are_refused():
    adata = simulated(n_cells=50, n_genes=10)
    adata.obs.loc[adata.obs_names[3], "batch"] = np.nan
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    with pytest.raises(ValueError, match="missing value.*cell 3"):
        scvi_rs.SCVI(adata)


def test_malformed_csr_is_refused_not_crashed():
    adata = simulated(n_cells=20, n_genes=10)
    x = adata.X
    x.indices[x.indptr[1] - 1] = 999  # the last column of row 0: sorted, but out of range
    adata.X = sp.csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)
    adata.X.has_canonical_format = True
    scvi_rs.SCVI.setup_anndata(adata)
    with pytest.raises(ValueError, match="column index 999"):
        scvi_rs.SCVI(adata)
