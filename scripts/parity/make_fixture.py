#!/usr/bin/env python3
"""Dump scvi-tools' own `scvi.module.VAE` (1.4.2) in float64 as parity fixtures for scvi-rs.

For each configuration in CONFIGS this builds the module with scvi-tools' own code and
initialisation (fixed torch seed), perturbs the BatchNorm affine parameters and running
statistics away from 1 / 0 and sets `px_r` to random values, runs ONE training-mode forward pass
on a fixed minibatch with fixed reparameterisation noise, calls `loss.backward()`, and writes

    tests/fixtures/parity/<name>.safetensors   (every tensor float64)
        input.x [B,G]  input.batch [B]  input.labels [B]  input.eps_z [B,L]
        input.eps_l [B,1] (latent library only)  input.kl_weight [1]
        param.<state_dict name>   every state_dict entry BEFORE the step (BatchNorm buffers,
                                  num_batches_tracked (shape [], stored as f64),
                                  library_log_means / library_log_vars included)
        out.loss [1]  out.reconstruction_loss [B]  out.kl_z [B]  out.kl_l [B]
        out.qz_m [B,L]  out.z [B,L]
        out.qz_scale [B,L]  out.library [B,1]       (extra, to localise a mismatch)
        grad.<parameter name>     every parameter whose .grad is not None after backward
        after.<buffer name>       every BatchNorm buffer after the training-mode forward
        metadata: one key "fixture", a JSON object (config, data provenance, versions)
    tests/fixtures/parity/configs.json            the VAE kwargs of every configuration
    tests/fixtures/parity/adam.safetensors        torch.optim.Adam as scvi-tools' TrainingPlan
                                                  configures it, three steps

Usage (from the repository root):

    scripts/parity/setup_venv.sh                              # once
    .venv-ref/bin/python scripts/parity/make_fixture.py       # regenerate + verify
    .venv-ref/bin/python scripts/parity/make_fixture.py --verify-only

Patches applied to scvi-tools for the float64 run (nothing else is changed):

1. `scvi.module._vae.one_hot` is wrapped so that `.float()` on its result gives the default dtype
   (float64) instead of float32. scvi-tools calls `one_hot(...).float()` in exactly three places
   of `scvi/module/_vae.py` (1.4.2): `_compute_local_library_params` (lines 350-356, the latent
   library prior) and `generative` (line 511 gene-label and line 514 gene-batch `px_r`). With
   `torch.set_default_dtype(torch.float64)` these produce a float32 one-hot that is then fed to
   `F.linear` with a float64 weight, which raises a dtype error. The one-hot is exactly 0 / 1, so
   casting it to float64 instead changes no value. FCLayers' own one-hot
   (`nn.functional.one_hot` in `scvi/nn/_base_components.py`) is a different name and is left
   alone: it is int64 and `torch.cat` promotes it to float64 exactly.
2. `torch.distributions.Normal.rsample` is replaced, for the duration of the forward pass, by
   `loc + eps * scale` with `eps` taken from a queue (first `eps_z` for `z_encoder`, then `eps_l`
   for `l_encoder`); this is the same expression torch uses (`torch/distributions/normal.py`,
   `rsample`) with the standard-normal draw replaced by the stored noise.
3. The module is built with `dropout_rate=0.0` (so no Dropout layer exists) and then
   `.double()` so that the float32 `library_log_means` / `library_log_vars` buffers
   (`torch.from_numpy(...).float()` in `VAE.__init__`) become float64; their values are the
   float32-rounded numbers scvi-tools computes (`_init_library_size` casts to float32 too).

Other float32 constants inside scvi-tools that need no patch: `log_zinb_positive` builds its
zero / non-zero masks with `.type(torch.float32)`; the masks are exactly 0 / 1 and the product is
promoted to float64.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch

torch.set_default_dtype(torch.float64)

import scvi  # noqa: E402
import scvi.module._vae as _vae_module  # noqa: E402
from scvi import REGISTRY_KEYS  # noqa: E402
from scvi.module import VAE  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "parity")
DATA = "/work/shared/data/kang_ifnb_hvg2k.h5ad"
DATA_ENV = "SCVI_RS_PARITY_DATA"  # overrides DATA

N_CELLS = 24
N_GENES = 32
DATA_SEED = 20251125

# The exact VAE kwargs of every configuration (plus name / kl_weight / batch_size, which are not
# VAE kwargs). `dropout_rate` and `log_variational` are the same for all and added in
# `vae_kwargs`. `batch_size` is the minibatch size B of the dumped step.
_BASE = dict(
    n_input=N_GENES,
    n_batch=2,
    n_labels=1,
    n_hidden=8,
    n_latent=4,
    n_layers=1,
    dispersion="gene",
    gene_likelihood="zinb",
    latent_distribution="normal",
    use_batch_norm="both",
    use_layer_norm="none",
    encode_covariates=False,
    deeply_inject_covariates=True,
    use_observed_lib_size=True,
    kl_weight=1.0,
    batch_size=N_CELLS,
)


def _cfg(name, **kw):
    c = dict(_BASE)
    c.update(kw)
    c["name"] = name
    return c


CONFIGS = [
    _cfg("default"),
    _cfg("nb_genebatch_2layers", gene_likelihood="nb", dispersion="gene-batch", n_layers=2,
         n_batch=3, kl_weight=0.37),
    _cfg("poisson_genelabel", gene_likelihood="poisson", dispersion="gene-label", n_labels=3,
         n_batch=2, kl_weight=0.5),
    _cfg("zinb_genecell_ln", dispersion="gene-cell", latent_distribution="ln", kl_weight=0.37),
    _cfg("latent_library", use_observed_lib_size=False, n_batch=2, encode_covariates=True,
         kl_weight=0.37),
    _cfg("layernorm_nobatchnorm", use_batch_norm="none", use_layer_norm="both", n_batch=1,
         kl_weight=0.8),
    _cfg("no_deep_inject", deeply_inject_covariates=False, n_layers=2, n_batch=3,
         encode_covariates=True, use_batch_norm="encoder", n_hidden=6, n_latent=5),
    _cfg("single_batch", n_batch=1, gene_likelihood="nb", kl_weight=0.0),
    _cfg("batchnorm_and_layernorm", use_batch_norm="both", use_layer_norm="both",
         encode_covariates=True, n_layers=2, kl_weight=0.37),
]

CONFIG_KEYS = [
    "name", "n_input", "n_batch", "n_labels", "n_hidden", "n_latent", "n_layers", "dispersion",
    "gene_likelihood", "latent_distribution", "use_batch_norm", "use_layer_norm",
    "encode_covariates", "deeply_inject_covariates", "use_observed_lib_size", "kl_weight",
    "batch_size",
]
VAE_KEYS = [
    "n_input", "n_batch", "n_labels", "n_hidden", "n_latent", "n_layers", "dispersion",
    "gene_likelihood", "latent_distribution", "use_batch_norm", "use_layer_norm",
    "encode_covariates", "deeply_inject_covariates", "use_observed_lib_size",
]
FIXED_VAE_KWARGS = dict(dropout_rate=0.0, log_variational=True)


# --------------------------------------------------------------------------------------------
# Patches (see the module docstring)
# --------------------------------------------------------------------------------------------

_orig_one_hot = _vae_module.one_hot


class _OneHotDefaultFloat(torch.Tensor):
    """A one-hot whose `.float()` gives the default dtype (float64 here), not float32."""

    def float(self, memory_format=torch.preserve_format):  # noqa: A003
        return self.as_subclass(torch.Tensor).to(torch.get_default_dtype())


def _one_hot_default_float(tensor, num_classes=-1):
    return _orig_one_hot(tensor, num_classes).as_subclass(_OneHotDefaultFloat)


_vae_module.one_hot = _one_hot_default_float

_NOISE: list[torch.Tensor] = []
_orig_rsample = torch.distributions.Normal.rsample


def _fixed_rsample(self, sample_shape=torch.Size()):
    if tuple(sample_shape) != ():
        raise RuntimeError("fixture: rsample with a sample_shape is not expected")
    if not _NOISE:
        raise RuntimeError("fixture: rsample called more often than noise was provided")
    eps = _NOISE.pop(0)
    if eps.shape != self.loc.shape:
        raise RuntimeError(f"fixture: noise shape {tuple(eps.shape)} != loc {tuple(self.loc.shape)}")
    return self.loc + eps * self.scale  # torch's own expression (normal.py, rsample)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_minibatch():
    """24 cells x 48 genes of real counts (Kang IFN-beta HVG file), or simulated NB counts.

    Returns (x [B,G] float64, stim [B] int (0 = CTRL, 1 = STIM, the sorted category order
    scvi-tools' setup_anndata gives), gene names, description).
    """
    rng = np.random.default_rng(DATA_SEED)
    path = os.environ.get(DATA_ENV, DATA)
    if os.path.exists(path):
        import anndata

        adata = anndata.read_h5ad(path)
        X = adata.X.tocsc()
        mean = np.asarray(X.mean(axis=0)).ravel()
        nz_frac = np.asarray((X > 0).mean(axis=0)).ravel()
        # highly expressed genes that are still zero in a fair share of cells
        cand = np.where((nz_frac >= 0.15) & (nz_frac <= 0.95))[0]
        genes = np.sort(cand[np.argsort(-mean[cand], kind="stable")[:N_GENES]])
        Xg = adata.X[:, genes].toarray().astype(np.float64)
        tot = Xg.sum(axis=1)
        stim_cat = adata.obs["batch"].astype(str).to_numpy()
        cells = []
        for b in ["CTRL", "STIM"]:
            in_b = np.where((stim_cat == b) & (tot > 0))[0]
            # two of the largest libraries of the batch (counts in the hundreds per gene) ...
            big = in_b[np.argsort(-tot[in_b], kind="stable")[:40]]
            cells += list(rng.choice(big, 2, replace=False))
            # ... and ten ordinary cells
            rest = np.setdiff1d(in_b, cells)
            cells += list(rng.choice(rest, N_CELLS // 2 - 2, replace=False))
        cells = np.array(cells)[rng.permutation(N_CELLS)]
        x = Xg[cells]
        stim = (stim_cat[cells] == "STIM").astype(np.int64)
        desc = (f"{os.path.basename(path)}: cells {cells.tolist()}, "
                f"genes {adata.var_names[genes].tolist()}")
        names = adata.var_names[genes].tolist()
    else:
        warnings.warn(f"{path} not found: simulating negative-binomial counts", stacklevel=1)
        mu = np.exp(rng.normal(1.0, 1.5, size=N_GENES))
        lib = np.exp(rng.normal(0.0, 0.8, size=N_CELLS))[:, None]
        theta = 2.0
        lam = rng.gamma(theta, (mu[None, :] * lib) / theta)
        x = rng.poisson(lam).astype(np.float64)
        x[x.sum(axis=1) == 0, 0] = 1.0
        stim = np.arange(N_CELLS) % 2
        desc = f"simulated NB counts, seed {DATA_SEED}"
        names = [f"g{i}" for i in range(N_GENES)]
    assert (x.sum(axis=1) > 0).all(), "every cell needs a non-zero total"
    return x, stim, names, desc


def covariates(cfg, stim, rng):
    b = cfg["n_batch"]
    if b == 1:
        batch = np.zeros(N_CELLS, dtype=np.int64)
    elif b == 2:
        batch = stim.copy()
    else:
        batch = rng.permutation(np.arange(N_CELLS) % b).astype(np.int64)
    if cfg["n_labels"] == 1:
        labels = np.zeros(N_CELLS, dtype=np.int64)
    else:
        labels = rng.permutation(np.arange(N_CELLS) % cfg["n_labels"]).astype(np.int64)
    return batch, labels


def library_prior(x, batch, n_batch):
    """library_log_means / vars exactly as scvi-tools computes them for SCVI: run
    `scvi.model._utils._init_library_size` on an AnnData of these cells (X as float32 CSR,
    like a real h5ad) registered with `SCVI.setup_anndata`."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp
    from scvi.model import SCVI
    from scvi.model._utils import _init_library_size

    ad = anndata.AnnData(X=sp.csr_matrix(x.astype(np.float32)))
    ad.obs["b"] = pd.Categorical([f"b{i}" for i in batch], categories=[f"b{i}" for i in range(n_batch)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SCVI.setup_anndata(ad, batch_key="b")
    mgr = SCVI._get_most_recent_anndata_manager(ad)
    return _init_library_size(mgr, n_batch)


# --------------------------------------------------------------------------------------------
# One configuration
# --------------------------------------------------------------------------------------------


def vae_kwargs(cfg):
    kw = {k: cfg[k] for k in VAE_KEYS}
    kw.update(FIXED_VAE_KWARGS)
    return kw


def build_module(cfg, seed, lib_means, lib_vars):
    torch.manual_seed(seed)
    kw = vae_kwargs(cfg)
    if not cfg["use_observed_lib_size"]:
        kw.update(library_log_means=lib_means, library_log_vars=lib_vars)
    module = VAE(**kw).double()
    module.train()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                n = m.num_features
                m.weight.add_(0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(7)
        if hasattr(module, "px_r"):
            module.px_r.copy_(0.3 + 0.8 * torch.randn(module.px_r.shape, generator=g))
    return module


def run_step(module, cfg, x, batch, labels, eps_z, eps_l):
    """One training-mode forward + backward, exactly as TrainingPlan.training_step calls it."""
    tensors = {
        REGISTRY_KEYS.X_KEY: torch.as_tensor(x),
        REGISTRY_KEYS.BATCH_KEY: torch.as_tensor(batch)[:, None],
        REGISTRY_KEYS.LABELS_KEY: torch.as_tensor(labels)[:, None],
    }
    kl_weight = torch.tensor(cfg["kl_weight"])  # TrainingPlan passes a 0-d tensor
    module.zero_grad(set_to_none=True)
    _NOISE.clear()
    _NOISE.append(torch.as_tensor(eps_z))
    if eps_l is not None:
        _NOISE.append(torch.as_tensor(eps_l))
    torch.distributions.Normal.rsample = _fixed_rsample
    try:
        inf, gen, losses = module(
            tensors,
            loss_kwargs={"kl_weight": kl_weight},
            get_inference_input_kwargs={"full_forward_pass": True},
        )
    finally:
        torch.distributions.Normal.rsample = _orig_rsample
    if _NOISE:
        raise RuntimeError("fixture: not all noise was consumed")
    losses.loss.backward()
    return inf, gen, losses


def make_config(cfg, idx, x, stim):
    rng = np.random.default_rng(DATA_SEED + 1000 * (idx + 1))
    batch, labels = covariates(cfg, stim, rng)
    B, L = N_CELLS, cfg["n_latent"]
    eps_z = rng.standard_normal((B, L))
    eps_l = None if cfg["use_observed_lib_size"] else rng.standard_normal((B, 1))
    lib_means = lib_vars = None
    if not cfg["use_observed_lib_size"]:
        lib_means, lib_vars = library_prior(x, batch, cfg["n_batch"])
    seed = 1234 + idx

    module = build_module(cfg, seed, lib_means, lib_vars)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    inf, gen, losses = run_step(module, cfg, x, batch, labels, eps_z, eps_l)

    t = {}
    t["input.x"] = torch.as_tensor(x)
    t["input.batch"] = torch.as_tensor(batch, dtype=torch.float64)
    t["input.labels"] = torch.as_tensor(labels, dtype=torch.float64)
    t["input.eps_z"] = torch.as_tensor(eps_z)
    if eps_l is not None:
        t["input.eps_l"] = torch.as_tensor(eps_l)
    t["input.kl_weight"] = torch.tensor([cfg["kl_weight"]])
    for k, v in before.items():
        t[f"param.{k}"] = v.to(torch.float64)
    t["out.loss"] = losses.loss.detach().reshape(1)
    t["out.reconstruction_loss"] = losses.reconstruction_loss["reconstruction_loss"].detach()
    t["out.kl_z"] = losses.kl_local["kl_divergence_z"].detach()
    t["out.kl_l"] = losses.kl_local["kl_divergence_l"].detach()
    t["out.qz_m"] = inf["qz"].loc.detach()
    t["out.z"] = inf["z"].detach()
    t["out.qz_scale"] = inf["qz"].scale.detach()
    t["out.library"] = inf["library"].detach()
    for k, p in module.named_parameters():
        if p.grad is not None:
            t[f"grad.{k}"] = p.grad.detach().clone()
    bn_buffers = {
        f"{mname}.{bname}" if mname else bname
        for mname, m in module.named_modules() if isinstance(m, torch.nn.BatchNorm1d)
        for bname, _ in m.named_buffers(recurse=False)
    }
    for k, v in module.state_dict().items():
        if k in bn_buffers:
            t[f"after.{k}"] = v.detach().clone().to(torch.float64)
    return {k: v.contiguous() for k, v in t.items()}


# --------------------------------------------------------------------------------------------
# Adam
# --------------------------------------------------------------------------------------------


def scvi_adam_settings():
    """Build scvi-tools' TrainingPlan with its defaults and read the optimizer it configures
    (TrainingPlan.configure_optimizers -> _optimizer_creator_fn, scvi/train/_trainingplans.py
    lines 473-517)."""
    from scvi.train import TrainingPlan

    m = VAE(n_input=5, n_batch=2)
    plan = TrainingPlan(m)
    opt = plan.configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.Adam, type(opt)
    d = dict(opt.defaults)
    # everything the update depends on
    assert d["lr"] == 1e-3 and d["eps"] == 0.01 and d["weight_decay"] == 1e-6, d
    assert tuple(d["betas"]) == (0.9, 0.999), d
    assert d["amsgrad"] is False and d["maximize"] is False, d
    assert d.get("decoupled_weight_decay", False) is False, d
    n_params = sum(1 for _ in m.parameters())
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == n_params
    return d


def make_adam():
    d = scvi_adam_settings()
    g = torch.Generator().manual_seed(777)
    shapes = [(5,), (3, 4), (7, 2), (4,)]  # the last parameter never gets a gradient
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    opt = torch.optim.Adam(params, lr=d["lr"], eps=d["eps"], weight_decay=d["weight_decay"])
    t = {f"init.param.{i}": p.detach().clone() for i, p in enumerate(params)}
    for k in (1, 2, 3):
        opt.zero_grad(set_to_none=True)
        for i, p in enumerate(params[:3]):
            # magnitudes from 1e-4 (well below eps = 0.01) to ~10
            mag = 10.0 ** torch.empty(p.shape).uniform_(-4.0, 1.0, generator=g)
            p.grad = torch.randn(p.shape, generator=g) * mag
            t[f"step{k}.grad.{i}"] = p.grad.detach().clone()
        opt.step()
        for i, p in enumerate(params):
            t[f"step{k}.param.{i}"] = p.detach().clone()
    assert torch.equal(t["step3.param.3"], t["init.param.3"])
    t["hparam.lr"] = torch.tensor([d["lr"]])
    t["hparam.beta1"] = torch.tensor([d["betas"][0]])
    t["hparam.beta2"] = torch.tensor([d["betas"][1]])
    t["hparam.eps"] = torch.tensor([d["eps"]])
    t["hparam.weight_decay"] = torch.tensor([d["weight_decay"]])
    meta = {
        "generator": "scripts/parity/make_fixture.py",
        "scvi_tools": scvi.__version__,
        "torch": torch.__version__,
        "optimizer": "torch.optim.Adam(params, lr=1e-3, eps=0.01, weight_decay=1e-6); betas "
                     "(0.9, 0.999), amsgrad=False, maximize=False, decoupled_weight_decay=False; "
                     "single-tensor (CPU) implementation",
        "layout": "init.param.{i}; step{k}.grad.{i} (i = 0..2), step{k}.param.{i} (i = 0..3) "
                  "after step k = 1..3; parameter 3 never has a gradient (grad None) and "
                  "stays equal to init.param.3",
    }
    return {k: v.contiguous() for k, v in t.items()}, meta


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _np_forward(cfg, t):
    """An independent NumPy re-implementation of VAE's training-mode forward and loss, from the
    tensors in a fixture file. Checks that the fixture means what README.md says it means."""
    from scipy.special import gammaln

    P = {k[len("param."):]: v.numpy() for k, v in t.items() if k.startswith("param.")}
    x = t["input.x"].numpy()
    batch = t["input.batch"].numpy().astype(int)
    labels = t["input.labels"].numpy().astype(int)
    B = x.shape[0]
    use_bn_enc = cfg["use_batch_norm"] in ("encoder", "both")
    use_bn_dec = cfg["use_batch_norm"] in ("decoder", "both")
    use_ln_enc = cfg["use_layer_norm"] in ("encoder", "both")
    use_ln_dec = cfg["use_layer_norm"] in ("decoder", "both")
    nb = cfg["n_batch"]
    onehot = np.eye(nb)[batch] if nb > 1 else None  # FCLayers ignores a 1-category covariate
    after = {}

    def fc(prefix, h, cov, n_layers, bn, ln):
        for i in range(n_layers):
            if cov is not None and (i == 0 or cfg["deeply_inject_covariates"]):
                h = np.concatenate([h, cov], axis=1)
            p = f"{prefix}.fc_layers.Layer {i}"
            h = h @ P[f"{p}.0.weight"].T + P[f"{p}.0.bias"]
            if bn:
                mu, var = h.mean(0), h.var(0)
                h = (h - mu) / np.sqrt(var + 1e-3) * P[f"{p}.1.weight"] + P[f"{p}.1.bias"]
                after[f"{p}.1.running_mean"] = 0.99 * P[f"{p}.1.running_mean"] + 0.01 * mu
                after[f"{p}.1.running_var"] = (0.99 * P[f"{p}.1.running_var"]
                                               + 0.01 * var * B / (B - 1))
                after[f"{p}.1.num_batches_tracked"] = P[f"{p}.1.num_batches_tracked"] + 1
            if ln:
                mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
                h = (h - mu) / np.sqrt(var + 1e-5)
            h = np.maximum(h, 0.0)
        return h

    def encoder(prefix, inp, n_layers, eps):
        cov = onehot if cfg["encode_covariates"] else None
        q = fc(f"{prefix}.encoder", inp, cov, n_layers, use_bn_enc, use_ln_enc)
        m = q @ P[f"{prefix}.mean_encoder.weight"].T + P[f"{prefix}.mean_encoder.bias"]
        v = np.exp(q @ P[f"{prefix}.var_encoder.weight"].T + P[f"{prefix}.var_encoder.bias"]) + 1e-4
        return m, v, m + eps * np.sqrt(v)

    xl = np.log1p(x)
    qm, qv, z = encoder("z_encoder", xl, cfg["n_layers"], t["input.eps_z"].numpy())
    if cfg["latent_distribution"] == "ln":
        z = np.exp(z - z.max(1, keepdims=True))
        z = z / z.sum(1, keepdims=True)
    if cfg["use_observed_lib_size"]:
        library = np.log(x.sum(1, keepdims=True))
    else:
        lm, lv, library = encoder("l_encoder", xl, 1, t["input.eps_l"].numpy())
    h = fc("decoder.px_decoder", z, onehot, cfg["n_layers"], use_bn_dec, use_ln_dec)
    s = h @ P["decoder.px_scale_decoder.0.weight"].T + P["decoder.px_scale_decoder.0.bias"]
    s = np.exp(s - s.max(1, keepdims=True))
    s = s / s.sum(1, keepdims=True)
    mu = np.exp(library) * s
    pi = h @ P["decoder.px_dropout_decoder.weight"].T + P["decoder.px_dropout_decoder.bias"]
    disp = cfg["dispersion"]
    if disp == "gene":
        r = P["px_r"][None, :]
    elif disp == "gene-batch":
        r = P["px_r"][:, batch].T
    elif disp == "gene-label":
        r = P["px_r"][:, labels].T
    else:
        r = h @ P["decoder.px_r_decoder.weight"].T + P["decoder.px_r_decoder.bias"]
    theta = np.exp(r)
    e = 1e-8
    lik = cfg["gene_likelihood"]
    if lik == "poisson":
        ll = np.where(x > 0, x * np.log(np.where(x > 0, mu, 1.0)), 0.0) - mu - gammaln(x + 1)
    else:
        nb_t = theta * (np.log(theta + e) - np.log(theta + mu + e))
        rest = x * (np.log(mu + e) - np.log(theta + mu + e)) + gammaln(x + theta) - gammaln(theta) - gammaln(x + 1)
        if lik == "nb":
            ll = nb_t + rest
        else:
            sp_neg_pi = np.logaddexp(0.0, -pi)
            pt = -pi + nb_t
            ll = np.where(x < e, np.logaddexp(0.0, pt) - sp_neg_pi, -sp_neg_pi + pt + rest)
    rec = -ll.sum(1)
    klz = 0.5 * (qv + qm ** 2 - 1.0 - np.log(qv)).sum(1)
    if cfg["use_observed_lib_size"]:
        kll = np.zeros(B)
    else:
        pm = P["library_log_means"][0, batch][:, None]
        pv = P["library_log_vars"][0, batch][:, None]
        kll = (0.5 * (lv / pv + (lm - pm) ** 2 / pv - 1.0 - np.log(lv / pv))).sum(1)
    kw = t["input.kl_weight"].numpy()[0]
    loss = np.mean(rec + kw * klz + kll)
    return dict(loss=loss, rec=rec, klz=klz, kll=kll, qm=qm, z=z, library=library, after=after)


def _close(a, b, rtol=1e-11, atol=1e-11):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rtol * np.abs(b) + atol))


def verify(configs):
    ok = True
    total = 0
    x0, stim0, _, _ = load_minibatch()
    for idx, cfg in enumerate(configs):
        path = os.path.join(OUT_DIR, f"{cfg['name']}.safetensors")
        total += os.path.getsize(path)
        t = load_file(path)
        errs = []
        # every tensor f64, every state_dict entry present
        if any(v.dtype != torch.float64 for v in t.values()):
            errs.append("non-f64 tensor")
        kw = t["input.kl_weight"][0]
        loss = torch.mean(t["out.reconstruction_loss"] + kw * t["out.kl_z"] + t["out.kl_l"])
        if not _close(loss, t["out.loss"][0], 1e-14, 0):
            errs.append(f"loss {t['out.loss'][0].item()} != mean(rec + kw kl_z + kl_l) {loss.item()}")
        # z is the patched reparameterisation of (qz_m, qz_scale, eps_z)
        zz = t["out.qz_m"] + t["input.eps_z"] * t["out.qz_scale"]
        if cfg["latent_distribution"] == "ln":
            zz = torch.softmax(zz, dim=-1)
        if not _close(zz, t["out.z"], 1e-14, 1e-15):
            errs.append("z != qz_m + eps_z * qz_scale")
        # regenerate from the same seed: bitwise identical (deterministic)
        again = make_config(cfg, idx, x0, stim0)
        if set(again) != set(t):
            errs.append(f"key sets differ on regeneration: {sorted(set(again) ^ set(t))}")
        else:
            diff = [k for k in t if not torch.equal(t[k], again[k])]
            if diff:
                errs.append(f"regeneration differs (not deterministic) in {diff[:5]}")
        # load the stored parameters into a fresh module and rerun: same outputs and grads
        lib_means = lib_vars = None
        if not cfg["use_observed_lib_size"]:
            lib_means = t["param.library_log_means"].numpy()
            lib_vars = t["param.library_log_vars"].numpy()
        module = build_module(cfg, 0, lib_means, lib_vars)
        sd = {k[len("param."):]: v for k, v in t.items() if k.startswith("param.")}
        if set(sd) != set(module.state_dict()):
            errs.append("param.* names differ from the module's state_dict")
        sd = {k: v.to(module.state_dict()[k].dtype) for k, v in sd.items()}
        module.load_state_dict(sd)
        eps_l = t["input.eps_l"].numpy() if "input.eps_l" in t else None
        inf, _, losses = run_step(module, cfg, t["input.x"].numpy(),
                                  t["input.batch"].numpy().astype(np.int64),
                                  t["input.labels"].numpy().astype(np.int64),
                                  t["input.eps_z"].numpy(), eps_l)
        if not torch.equal(losses.loss.detach().reshape(1), t["out.loss"]):
            errs.append("reloaded parameters give a different loss")
        for k, p in module.named_parameters():
            if (p.grad is None) != (f"grad.{k}" not in t):
                errs.append(f"grad presence differs for {k}")
            elif p.grad is not None and not torch.equal(p.grad, t[f"grad.{k}"]):
                errs.append(f"reloaded grad differs for {k}")
        # independent NumPy forward
        ref = _np_forward(cfg, t)
        for name, a, b in [("loss", ref["loss"], t["out.loss"][0].numpy()),
                           ("rec", ref["rec"], t["out.reconstruction_loss"].numpy()),
                           ("kl_z", ref["klz"], t["out.kl_z"].numpy()),
                           ("kl_l", ref["kll"], t["out.kl_l"].numpy()),
                           ("qz_m", ref["qm"], t["out.qz_m"].numpy()),
                           ("z", ref["z"], t["out.z"].numpy()),
                           ("library", ref["library"], t["out.library"].numpy())]:
            if not _close(a, b, 1e-10, 1e-10):
                err = np.max(np.abs(np.asarray(a) - b))
                errs.append(f"numpy {name} differs from torch (max abs {err:.3e})")
        for k, v in ref["after"].items():
            if not _close(v, t[f"after.{k}"].numpy(), 1e-12, 1e-14):
                errs.append(f"numpy BatchNorm update differs for {k}")
        n_after = sum(1 for k in t if k.startswith("after."))
        n_grad = sum(1 for k in t if k.startswith("grad."))
        x = t["input.x"]
        status = "ok" if not errs else "FAIL"
        print(f"{cfg['name']:26s} {status}  loss {t['out.loss'][0].item():.6f}  "
              f"{len(t)} tensors ({n_grad} grads, {n_after} after)  "
              f"{os.path.getsize(path) / 1024:.1f} KiB")
        for e in errs:
            print("    " + e)
        ok &= not errs
    # Adam: replay the recorded gradients through a fresh torch Adam
    path = os.path.join(OUT_DIR, "adam.safetensors")
    total += os.path.getsize(path)
    t = load_file(path)
    again, _ = make_adam()
    adam_ok = set(again) == set(t) and all(torch.equal(t[k], again[k]) for k in t)
    adam_ok &= torch.equal(t["step3.param.3"], t["init.param.3"])
    # the update written out in NumPy, as README.md states it (torch/optim/adam.py,
    # _single_tensor_adam): L2 weight decay added to the gradient; m by lerp; v by mul + addcmul
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 0.01, 1e-6
    for i in range(3):
        p = t[f"init.param.{i}"].numpy().copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for k in (1, 2, 3):
            g = t[f"step{k}.grad.{i}"].numpy() + wd * p
            m = m + (1 - b1) * (g - m)
            v = v * b2 + (1 - b2) * g * g
            denom = np.sqrt(v) / (1 - b2 ** k) ** 0.5 + eps
            p = p - (lr / (1 - b1 ** k)) * (m / denom)
            if not _close(p, t[f"step{k}.param.{i}"].numpy(), 1e-14, 1e-15):
                print(f"    numpy Adam differs: param {i} step {k}")
                adam_ok = False
    print(f"{'adam':26s} {'ok' if adam_ok else 'FAIL'}  {os.path.getsize(path) / 1024:.1f} KiB")
    ok &= adam_ok
    total += os.path.getsize(os.path.join(OUT_DIR, "configs.json"))
    print(f"fixture total: {total / 1024:.1f} KiB ({total} bytes)")
    x = x0
    print(f"minibatch: {x.shape[0]} cells x {x.shape[1]} genes, {np.mean(x == 0):.0%} zeros, "
          f"max count {x.max():.0f}, cell totals {x.sum(1).min():.0f}..{x.sum(1).max():.0f}")
    return ok


# --------------------------------------------------------------------------------------------


def _one_key(meta):
    """safetensors writes the metadata map in hash order, so several keys give files that differ
    byte for byte between runs; one key holding sorted JSON keeps regeneration byte-identical."""
    return {"fixture": json.dumps(meta, sort_keys=True)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verify-only", action="store_true", help="only check the existing fixture")
    args = ap.parse_args()
    if scvi.__version__ != "1.4.2":
        print(f"warning: scvi-tools {scvi.__version__}, the fixture was made with 1.4.2",
              file=sys.stderr)
    torch.set_num_threads(1)

    if not args.verify_only:
        os.makedirs(OUT_DIR, exist_ok=True)
        x, stim, names, desc = load_minibatch()
        listing = []
        for idx, cfg in enumerate(CONFIGS):
            t = make_config(cfg, idx, x, stim)
            entry = {k: cfg[k] for k in CONFIG_KEYS}
            entry["vae_kwargs"] = vae_kwargs(cfg)
            listing.append(entry)
            meta = {
                "generator": "scripts/parity/make_fixture.py",
                "scvi_tools": scvi.__version__,
                "torch": torch.__version__,
                "config": entry,
                # full provenance (cell indices, gene names) once, in default.safetensors
                "data": desc if idx == 0 else desc.split(":")[0] + " (details: default.safetensors)",
            }
            save_file(t, os.path.join(OUT_DIR, f"{cfg['name']}.safetensors"),
                      metadata=_one_key(meta))
        with open(os.path.join(OUT_DIR, "configs.json"), "w") as f:
            json.dump(listing, f, indent=1)
            f.write("\n")
        t, meta = make_adam()
        save_file(t, os.path.join(OUT_DIR, "adam.safetensors"), metadata=_one_key(meta))
        for f in os.listdir(OUT_DIR):
            os.chmod(os.path.join(OUT_DIR, f), 0o644)
        print(f"wrote {len(CONFIGS)} configurations + adam to {os.path.relpath(OUT_DIR, REPO)}")

    ok = verify(CONFIGS)
    print("verification", "passed" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
