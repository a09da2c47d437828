"""The after-training methods: scvi-tools' names, arguments and return types, and the command
line's numbers (same model, data and seed)."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvi_rs
from conftest import cli, simulated


@pytest.fixture(scope="module")
def trained():
    scvi_rs.settings.num_threads = 2
    adata = simulated(n_cells=300, n_genes=40)
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    m = scvi_rs.SCVI(adata, n_latent=5)
    m.train(max_epochs=3, accelerator="cpu", progress_bar=False)
    return adata, m


def test_elbo_reconstruction_and_marginal_ll(trained):
    adata, m = trained
    elbo = m.get_elbo()
    rec = m.get_reconstruction_error()["reconstruction_loss"]
    assert elbo < 0 < rec and -elbo > rec
    assert m.get_elbo() == elbo, "the same seed gives the same value"
    ll = m.get_marginal_ll(n_mc_samples=20)
    per_cell = m.get_marginal_ll(n_mc_samples=20, return_mean=False)
    assert isinstance(ll, float) and ll < 0
    assert per_cell.shape == (adata.n_obs,)
    assert m.get_elbo(indices=[0, 1, 2]) != elbo


def test_normalized_expression_is_a_frame_like_scvi_tools(trained):
    adata, m = trained
    df = m.get_normalized_expression()
    assert isinstance(df, pd.DataFrame) and df.shape == adata.shape
    assert list(df.index) == list(adata.obs_names) and list(df.columns) == list(adata.var_names)
    np.testing.assert_allclose(df.to_numpy().sum(axis=1), 1.0, rtol=1e-4)
    sub = m.get_normalized_expression(indices=[3, 1], gene_list=["gene_2", "gene_0"], library_size=1e4,
                                      transform_batch="b0", return_numpy=True)  # fmt: skip
    assert sub.shape == (2, 2)
    with pytest.raises(ValueError, match="nope"):
        m.get_normalized_expression(transform_batch="nope")
    with pytest.raises(NotImplementedError, match="return_mean"):
        m.get_normalized_expression(return_mean=False)


def test_normalized_expression_equals_the_command_line(trained, tmp):
    adata, m = trained
    m.save(tmp / "model")
    adata.write_h5ad(tmp / "d.h5ad")
    rc, err = cli("normalize", tmp / "model", tmp / "d.h5ad", "--out", tmp / "x.npy", "--seed", "0",
                  "--library-size", "10000", "--device", "cpu", "--threads", "2", "--quiet")  # fmt: skip
    assert rc == 0, err
    x = m.get_normalized_expression(library_size=1e4, return_numpy=True)
    assert np.array_equal(x, np.load(tmp / "x.npy"))


def test_differential_expression(trained):
    adata, m = trained
    de = m.differential_expression(groupby="cell_type")
    assert {"proba_m1", "bayes_factor", "scale1", "scale2"} <= set(de.columns)
    assert len(de) == 2 * adata.n_vars
    one = m.differential_expression(groupby="cell_type", group1="t0", mode="change")
    assert len(one) == adata.n_vars and {"proba_de", "lfc_mean"} <= set(one.columns)
    with pytest.raises(ValueError, match="nope"):
        m.differential_expression(groupby="cell_type", group1="nope")
    with pytest.raises(KeyError, match="nope"):
        m.differential_expression(groupby="nope")


def test_posterior_predictive_sample(trained):
    adata, m = trained
    x = m.posterior_predictive_sample()
    assert sp.issparse(x) and x.shape == adata.shape
    assert np.all(x.data >= 0) and np.all(x.data == np.round(x.data))
    draws = m.posterior_predictive_sample(indices=[0, 5], n_samples=3, gene_list=["gene_1"])
    assert len(draws) == 3 and all(d.shape == (2, 1) for d in draws)


def test_latent_library_model_evaluates(tmp):
    adata = simulated(n_cells=200, n_genes=30)
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    m = scvi_rs.SCVI(adata, use_observed_lib_size=False)
    m.train(max_epochs=2, accelerator="cpu", progress_bar=False)
    assert np.isfinite(m.get_marginal_ll(n_mc_samples=10))
    meta = json.loads(m._model.meta_json())
    assert meta["model"]["use_observed_lib_size"] is False
