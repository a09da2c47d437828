"""A notebook-style session on the shared Kang data (train, embed, normalize, DE, save, load), and
the hand-over to scvi-tools where it is installed."""

import os
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pytest

import scvi_rs
from conftest import ROOT, SHARED, skip

REF_PYTHON = os.environ.get("SCVI_RS_REF_PYTHON", os.path.join(ROOT, "..", "main", ".venv-ref", "bin", "python"))


def test_notebook_session_on_kang(tmp):
    path = os.path.join(SHARED, "kang_ifnb_hvg2k.h5ad")
    if not os.path.exists(path):
        skip(f"{path} is absent (the shared data sets)")
    adata = ad.read_h5ad(path)
    scvi_rs.SCVI.setup_anndata(adata, batch_key="stim", labels_key="cell_type")
    model = scvi_rs.SCVI(adata, n_latent=10)
    model.train(max_epochs=2, accelerator="cpu", early_stopping=True)
    adata.obsm["X_scVI"] = model.get_latent_representation()
    assert adata.obsm["X_scVI"].shape == (adata.n_obs, 10)
    assert np.isfinite(adata.obsm["X_scVI"]).all()
    h = model.history
    assert len(h["elbo_validation"]) == 2 and h["elbo_validation"].index.name == "epoch"
    expr = model.get_normalized_expression(library_size=1e4)
    assert expr.shape == adata.shape
    de = model.differential_expression(groupby="cell_type", group1="CD14+ Monocytes")
    assert len(de) == adata.n_vars
    model.save(tmp / "model")
    again = scvi_rs.SCVI.load(tmp / "model", adata)
    assert np.array_equal(again.get_latent_representation(), adata.obsm["X_scVI"])


def test_to_scvi_tools_gives_the_same_latent(tmp):
    """In scvi-tools' own Python (its venv, where torch is): our latent and scvi-tools' agree."""
    if not os.path.exists(REF_PYTHON):
        skip(f"no scvi-tools Python at {REF_PYTHON} (set SCVI_RS_REF_PYTHON)")
    pkg = os.path.dirname(os.path.dirname(scvi_rs.__file__))
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {pkg!r}); sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, scvi_rs
        from simdata import simulated
        scvi_rs.settings.num_threads = 2
        adata = simulated(n_cells=300, n_genes=40)
        scvi_rs.SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
        m = scvi_rs.SCVI(adata, n_latent=5)
        m.train(max_epochs=3, accelerator="cpu", progress_bar=False)
        z = m.get_latent_representation()
        st = m.to_scvi_tools()
        z2 = st.get_latent_representation()
        err = float(np.abs(z - z2).max())
        print("max abs difference", err)
        assert err < 1e-5, err
        """
    )
    p = subprocess.run([REF_PYTHON, "-c", script], capture_output=True, text=True, timeout=300)
    if p.returncode != 0 and "No module named" in p.stderr and "scvi_rs" not in p.stderr.split("No module named")[1][:20]:
        skip(f"the scvi-tools Python lacks a module: {p.stderr.strip().splitlines()[-1]}")
    assert p.returncode == 0, p.stdout + p.stderr
    print(p.stdout.strip())
