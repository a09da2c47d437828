"""The Python API gives the command line's model bit for bit: same data, options, seed, threads."""

import numpy as np

import scvi_rs
from conftest import cli, simulated


def _train_cli(h5ad, out, *extra):
    rc, err = cli("train", h5ad, "--out", out, "--device", "cpu", "--threads", "2", "--quiet", *extra)
    assert rc == 0, err


def _embed_cli(model, h5ad, out):
    rc, err = cli("embed", model, h5ad, "--out", out, "--device", "cpu", "--threads", "2")
    assert rc == 0, err
    return np.load(out)


def test_python_and_cli_give_identical_weights_and_latent(tmp):
    adata = simulated(n_cells=500, n_genes=50)
    h5ad = tmp / "sim.h5ad"
    adata.write_h5ad(h5ad)
    _train_cli(h5ad, tmp / "cli", "--batch-key", "batch", "--n-latent", "6", "--max-epochs", "3",
               "--seed", "7", "--gene-likelihood", "nb")
    z_cli = _embed_cli(tmp / "cli", h5ad, tmp / "z.npy")

    scvi_rs.settings.seed = 7
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi_rs.SCVI(adata, n_latent=6, gene_likelihood="nb")
    model.train(max_epochs=3, accelerator="cpu", progress_bar=False)
    model.save(tmp / "py")
    a = (tmp / "cli" / "model.safetensors").read_bytes()
    b = (tmp / "py" / "model.safetensors").read_bytes()
    assert a == b, "weights differ from the command line's"
    z = model.get_latent_representation(accelerator="cpu")
    assert z.dtype == np.float32 and z.shape == (500, 6)
    assert np.array_equal(z, z_cli), "latent differs from the command line's"
    assert list(model.history["elbo_train"].index) == [0, 1, 2]


def test_backed_anndata_is_read_from_its_file_with_the_same_result(tmp):
    import anndata as ad

    adata = simulated(n_cells=300, n_genes=40)
    h5ad = tmp / "sim.h5ad"
    adata.write_h5ad(h5ad)
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    mem = scvi_rs.SCVI(adata)
    mem.train(max_epochs=2, accelerator="cpu", progress_bar=False)

    backed = ad.read_h5ad(h5ad, backed="r")
    scvi_rs.SCVI.setup_anndata(backed, batch_key="batch")
    disk = scvi_rs.SCVI(backed)
    disk.train(max_epochs=2, accelerator="cpu", progress_bar=False)
    assert np.array_equal(mem.get_latent_representation(), disk.get_latent_representation())


def test_a_model_saved_by_the_cli_loads_in_python(tmp):
    adata = simulated(n_cells=300, n_genes=40)
    h5ad = tmp / "sim.h5ad"
    adata.write_h5ad(h5ad)
    _train_cli(h5ad, tmp / "cli", "--batch-key", "batch", "--max-epochs", "2")
    z_cli = _embed_cli(tmp / "cli", h5ad, tmp / "z.npy")
    model = scvi_rs.SCVI.load(tmp / "cli", adata)
    assert model.is_trained
    assert np.array_equal(model.get_latent_representation(), z_cli)
