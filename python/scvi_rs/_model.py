"""``scvi_rs.SCVI``: scvi-tools' ``scvi.model.SCVI`` surface, with its argument names and defaults,
over the Rust model (``_core.Model``). The model directory is the command line's (``scvi-rs train
--out``): a model saved here loads there and the other way round."""

import json
import os
import sys
import tempfile
import warnings

import numpy as np
import pandas as pd

from . import _core
from ._data import check_keys, to_data
from ._settings import settings

_SETUP = "_scvi_rs_setup"

_LIKELIHOODS = ("zinb", "nb", "poisson")
_DISPERSIONS = ("gene", "gene-batch", "gene-label", "gene-cell")
_LATENTS = ("normal", "ln")
_NORMS = ("encoder", "decoder", "both", "none")


def _not_yet(name):
    return NotImplementedError(f"scvi-rs does not implement {name} yet")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _device(accelerator, devices):
    """scvi-tools' accelerator / devices as the engine's device name."""
    accelerator = str(accelerator).lower()
    if accelerator == "cpu":
        return "cpu"
    if accelerator == "auto" and devices in ("auto", None, 1, -1):
        return "auto"
    if accelerator not in ("gpu", "cuda", "auto"):
        raise ValueError(f"accelerator must be 'cpu', 'gpu' or 'auto'; got {accelerator!r}")
    if devices in ("auto", None, 1, -1):
        index = 0
    elif isinstance(devices, (list, tuple)) and len(devices) == 1:
        index = int(devices[0])
    elif isinstance(devices, str) and devices.isdigit() and int(devices) == 1:
        index = 0
    else:
        raise NotImplementedError(f"scvi-rs trains on one device; got devices={devices!r}")
    return f"cuda:{index}"


class _Progress:
    """A one-line progress display on stderr (terminals and notebooks alike)."""

    def __init__(self, enabled):
        self.enabled = enabled

    def __call__(self, epoch, max_epochs, record):
        if not self.enabled:
            return
        train_loss, elbo_train, elbo_val, seconds = record
        val = "" if elbo_val is None else f", elbo_validation={elbo_val:.2f}"
        end = "\n" if epoch + 1 == max_epochs else ""
        sys.stderr.write(
            f"\rEpoch {epoch + 1}/{max_epochs}: train_loss={train_loss:.2f}, "
            f"elbo_train={elbo_train:.2f}{val} ({seconds:.2f} s){end}"
        )
        sys.stderr.flush()


class SCVI:
    """scVI (Lopez et al. 2018), as ``scvi.model.SCVI``.

    Model options: ``n_hidden``, ``n_latent``, ``n_layers``, ``dropout_rate``, ``dispersion``
    ("gene", "gene-batch", "gene-label", "gene-cell"), ``gene_likelihood`` ("zinb", "nb",
    "poisson"), ``latent_distribution`` ("normal", "ln"), ``use_observed_lib_size``, and the
    keyword options ``encode_covariates``, ``deeply_inject_covariates``, ``use_batch_norm`` and
    ``use_layer_norm`` ("encoder", "decoder", "both", "none").
    """

    @classmethod
    def setup_anndata(
        cls,
        adata,
        layer=None,
        batch_key=None,
        labels_key=None,
        size_factor_key=None,
        categorical_covariate_keys=None,
        continuous_covariate_keys=None,
        **kwargs,
    ):
        """Name the counts (X or ``layer``) and the obs columns of batches and labels."""
        for name, value in (
            ("size_factor_key", size_factor_key),
            ("categorical_covariate_keys", categorical_covariate_keys),
            ("continuous_covariate_keys", continuous_covariate_keys),
        ):
            if value is not None:
                raise _not_yet(f"setup_anndata({name}=...)")
        if kwargs:
            raise TypeError(f"setup_anndata() got unexpected arguments: {', '.join(kwargs)}")
        check_keys(adata, layer, [batch_key, labels_key])
        adata.uns[_SETUP] = {
            "layer": layer,
            "batch_key": batch_key,
            "labels_key": labels_key,
        }

    def __init__(self, adata=None, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1,
                 dispersion="gene", gene_likelihood="zinb", use_observed_lib_size=True,
                 latent_distribution="normal", **kwargs):  # fmt: skip
        if adata is None:
            raise _not_yet("SCVI(adata=None) (a model without data)")
        setup = self._setup_of(adata)
        known = {
            "encode_covariates": False,
            "deeply_inject_covariates": True,
            "use_batch_norm": "both",
            "use_layer_norm": "none",
        }
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise _not_yet(f"SCVI({', '.join(unknown)}=...)")
        opts = {**known, **kwargs}
        config = {
            "n_input": 0,
            "n_batch": 1,
            "n_labels": 1,
            "n_hidden": int(n_hidden),
            "n_latent": int(n_latent),
            "n_layers": int(n_layers),
            "dropout_rate": float(dropout_rate),
            "dispersion": _choice("dispersion", dispersion, _DISPERSIONS),
            "gene_likelihood": _choice("gene_likelihood", gene_likelihood, _LIKELIHOODS),
            "latent_distribution": _choice("latent_distribution", latent_distribution, _LATENTS),
            "encode_covariates": bool(opts["encode_covariates"]),
            "deeply_inject_covariates": bool(opts["deeply_inject_covariates"]),
            "use_batch_norm": _choice("use_batch_norm", opts["use_batch_norm"], _NORMS),
            "use_layer_norm": _choice("use_layer_norm", opts["use_layer_norm"], _NORMS),
            "use_observed_lib_size": bool(use_observed_lib_size),
        }
        data = self._data(adata, setup, warn=True)
        self._model = _core.Model(
            data, setup["batch_key"], setup["labels_key"], json.dumps(config), settings.seed
        )
        self.adata = adata
        self._layer = setup["layer"]

    # -- set-up -----------------------------------------------------------------------------

    @staticmethod
    def _setup_of(adata):
        setup = adata.uns.get(_SETUP) if hasattr(adata, "uns") else None
        if setup is None:
            raise ValueError(
                "the AnnData has not been set up: call scvi_rs.SCVI.setup_anndata(adata, ...) first"
            )
        return setup

    def _keys(self):
        meta = self._meta()
        return meta["setup"].get("batch_key"), meta["setup"].get("labels_key")

    @staticmethod
    def _data(adata, setup, warn=False):
        data = to_data(adata, setup["layer"], [setup["batch_key"], setup["labels_key"]])
        if warn and data.warning:
            warnings.warn(data.warning, UserWarning, stacklevel=3)
        return data

    def _data_for(self, adata, extra_key=None):
        """The engine's data for ``adata`` (the training AnnData when None), checked against the
        model: same genes in the same order, categories known by name. ``extra_key``: one more
        obs column to hand over (differential expression's ``groupby``)."""
        if adata is None:
            adata, layer = self.adata, self._layer
        else:
            setup = adata.uns.get(_SETUP) if hasattr(adata, "uns") else None
            layer = setup["layer"] if setup else self._layer
        batch_key, labels_key = self._keys()
        keys = [batch_key, labels_key] + ([extra_key] if extra_key not in (None, batch_key, labels_key) else [])
        data = to_data(adata, layer, keys)
        self._model.check_data(data)
        return data

    def _cells(self, indices):
        return None if indices is None else [int(i) for i in np.asarray(indices).ravel()]

    def _ctx(self, indices, accelerator):
        """What every after-training call takes: (cells, accelerator, threads, seed)."""
        return (self._cells(indices), str(accelerator), settings.threads(), settings.seed)

    def _obs_names(self, adata, indices):
        names = (self.adata if adata is None else adata).obs_names
        return names if indices is None else names[np.asarray(indices)]

    def _meta(self):
        return json.loads(self._model.meta_json())

    # -- training ---------------------------------------------------------------------------

    def train(
        self,
        max_epochs=None,
        accelerator="auto",
        devices="auto",
        train_size=None,
        validation_size=None,
        shuffle_set_split=True,
        load_sparse_tensor=False,
        batch_size=128,
        early_stopping=False,
        datasplitter_kwargs=None,
        plan_kwargs=None,
        datamodule=None,
        progress_bar=True,
        **trainer_kwargs,
    ):
        """Train as ``scvi.model.SCVI.train``: ``max_epochs`` (default scvi-tools' heuristic
        ``min(round(20000 / n_cells * 400), 400)``), ``batch_size``, ``train_size`` (0.9),
        ``validation_size`` (the rest), ``early_stopping`` with ``early_stopping_patience`` (45)
        and ``early_stopping_min_delta`` (0) on ``elbo_validation``, ``plan_kwargs`` ``lr``,
        ``weight_decay``, ``eps``, ``n_epochs_kl_warmup``, ``max_kl_weight``,
        ``min_kl_weight``; ``max_steps`` as a trainer keyword."""
        if datamodule is not None:
            raise _not_yet("train(datamodule=...)")
        if not shuffle_set_split:
            raise _not_yet("train(shuffle_set_split=False)")
        if datasplitter_kwargs:
            raise _not_yet(f"train(datasplitter_kwargs={datasplitter_kwargs!r})")
        train_size = 0.9 if train_size is None else float(train_size)
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size}")
        if validation_size is not None and abs(train_size + validation_size - 1.0) > 1e-9:
            raise _not_yet("a test set (train_size + validation_size < 1)")
        plan = dict(plan_kwargs or {})
        adam = {
            "lr": float(plan.pop("lr", 1e-3)),
            "beta1": 0.9,
            "beta2": 0.999,
            "eps": float(plan.pop("eps", 0.01)),
            "weight_decay": float(plan.pop("weight_decay", 1e-6)),
        }
        if plan.pop("optimizer", "Adam") != "Adam":
            raise _not_yet("plan_kwargs optimizer other than Adam")
        if plan.pop("n_steps_kl_warmup", None) is not None:
            raise _not_yet("plan_kwargs n_steps_kl_warmup")
        warmup = plan.pop("n_epochs_kl_warmup", 400)
        max_kl = float(plan.pop("max_kl_weight", 1.0))
        min_kl = float(plan.pop("min_kl_weight", 0.0))
        if plan:
            raise _not_yet(f"plan_kwargs {', '.join(plan)}")
        monitor = trainer_kwargs.pop("early_stopping_monitor", "elbo_validation")
        if monitor != "elbo_validation":
            raise _not_yet(f"early_stopping_monitor={monitor!r}")
        if trainer_kwargs.pop("early_stopping_mode", "min") != "min":
            raise _not_yet("early_stopping_mode other than 'min'")
        patience = int(trainer_kwargs.pop("early_stopping_patience", 45))
        min_delta = float(trainer_kwargs.pop("early_stopping_min_delta", 0.0))
        max_steps = trainer_kwargs.pop("max_steps", None)
        if max_steps is not None and max_steps < 0:
            max_steps = None
        if trainer_kwargs.pop("check_val_every_n_epoch", 1) not in (1, None):
            raise _not_yet("check_val_every_n_epoch other than 1")
        if trainer_kwargs:
            raise _not_yet(f"train({', '.join(trainer_kwargs)}=...)")
        if load_sparse_tensor:
            pass  # the engine always reads sparse rows
        config = {
            "max_epochs": None if max_epochs is None else int(max_epochs),
            "batch_size": int(batch_size),
            "train_size": train_size,
            "seed": settings.seed,
            "adam": adam,
            "n_epochs_kl_warmup": 0 if warmup is None else int(warmup),
            "max_kl_weight": max_kl,
            "min_kl_weight": min_kl,
            "early_stopping": bool(early_stopping),
            "early_stopping_patience": patience,
            "early_stopping_min_delta": min_delta,
            "max_steps": None if max_steps is None else int(max_steps),
        }
        data = self._data_for(None)
        interrupted = self._model.train(
            data,
            json.dumps(config),
            _device(accelerator, devices),
            settings.threads(),
            _Progress(progress_bar),
        )
        if interrupted:
            n = len(self._model.history()["epoch"])
            if progress_bar:
                sys.stderr.write("\n")
            warnings.warn(
                f"training interrupted: the model holds the weights of epoch {n - 1} "
                f"({n} epochs trained)",
                UserWarning,
                stacklevel=2,
            )

    @property
    def is_trained(self):
        return self._model.is_trained

    @property
    def history(self):
        """scvi-tools' ``history``: a dict of one-column DataFrames indexed by epoch."""
        cols = self._model.history()
        epochs = pd.Index(cols.pop("epoch"), name="epoch")
        cols.pop("seconds")
        return {k: pd.DataFrame({k: np.array(v, dtype=float)}, index=epochs) for k, v in cols.items()}

    # -- after training ---------------------------------------------------------------------

    def get_latent_representation(self, adata=None, indices=None, give_mean=True, mc_samples=5000,
                                  batch_size=None, return_dist=False, dataloader=None,
                                  accelerator="auto"):  # fmt: skip
        """The posterior mean of the latent variable for each cell (``[n_cells, n_latent]``,
        float32), of the training AnnData or of ``adata`` (same genes; its batch and label
        categories matched by name)."""
        if not give_mean:
            raise _not_yet("get_latent_representation(give_mean=False)")
        if return_dist:
            raise _not_yet("get_latent_representation(return_dist=True)")
        if dataloader is not None:
            raise _not_yet("get_latent_representation(dataloader=...)")
        data = self._data_for(adata)
        z = self._model.latent(data, _device(accelerator, "auto"), settings.threads(), int(mc_samples))
        if indices is not None:
            z = z[np.asarray(indices)]
        return z

    def get_elbo(self, adata=None, indices=None, batch_size=None, dataloader=None, return_mean=True,
                 accelerator="auto", **kwargs):  # fmt: skip
        """scvi-tools' ``get_elbo``: the mean ELBO (negative, higher is better), one posterior
        draw per cell (seeded by ``settings.seed``)."""
        _refuse(dataloader=dataloader, return_mean=None if return_mean else False, **kwargs)
        data = self._data_for(adata)
        return self._model.elbo(data, self._ctx(indices, accelerator))[0]

    def get_reconstruction_error(self, adata=None, indices=None, batch_size=None, dataloader=None,
                                 return_mean=True, accelerator="auto", **kwargs):  # fmt: skip
        """scvi-tools' ``get_reconstruction_error``: ``{"reconstruction_loss": mean}``."""
        _refuse(dataloader=dataloader, return_mean=None if return_mean else False, **kwargs)
        data = self._data_for(adata)
        e = self._model.elbo(data, self._ctx(indices, accelerator))
        return {"reconstruction_loss": e[1]}

    def get_marginal_ll(self, adata=None, indices=None, n_mc_samples=1000, batch_size=None,
                        return_mean=True, dataloader=None, accelerator="auto", **kwargs):  # fmt: skip
        """scvi-tools' ``get_marginal_ll``: importance-sampled log p(x), its mean (as scvi-tools
        averages it) or one value per cell."""
        _refuse(dataloader=dataloader, **kwargs)
        data = self._data_for(adata)
        return self._model.marginal_ll(data, self._ctx(indices, accelerator), int(n_mc_samples),
                                       bool(return_mean))  # fmt: skip

    def get_normalized_expression(self, adata=None, indices=None, transform_batch=None, gene_list=None,
                                  library_size=1, n_samples=1, n_samples_overall=None, weights=None,
                                  batch_size=None, return_mean=True, return_numpy=None, silent=True,
                                  dataloader=None, accelerator="auto", **kwargs):  # fmt: skip
        """scvi-tools' ``get_normalized_expression``: a cells x genes DataFrame (or array with
        ``return_numpy``) of ``px_scale * library_size`` (``library_size="latent"``: each cell's
        own library), averaged over ``n_samples`` draws and the ``transform_batch`` categories."""
        _refuse(n_samples_overall=n_samples_overall, weights=weights, dataloader=dataloader,
                return_mean=None if return_mean else False, **kwargs)  # fmt: skip
        data = self._data_for(adata)
        if transform_batch is None:
            batches = []
        elif isinstance(transform_batch, (list, tuple)):
            batches = [str(b) for b in transform_batch]
        else:
            batches = [str(transform_batch)]
        lib = None if library_size == "latent" else float(library_size)
        genes = None if gene_list is None else [str(g) for g in gene_list]
        x, names = self._model.normalized(data, self._ctx(indices, accelerator), lib, int(n_samples),
                                          batches, genes)  # fmt: skip
        if return_numpy:
            return x
        return pd.DataFrame(x, index=self._obs_names(adata, indices), columns=names)

    def differential_expression(self, adata=None, groupby=None, group1=None, group2=None, idx1=None,
                                idx2=None, mode="vanilla", delta=0.25, batch_size=None, all_stats=True,
                                batch_correction=False, batchid1=None, batchid2=None, fdr_target=0.05,
                                silent=False, weights="uniform", filter_outlier_cells=False,
                                importance_weighting_kwargs=None, accelerator="auto",
                                **kwargs):  # fmt: skip
        """scvi-tools' ``differential_expression`` ("vanilla" or "change" mode) of ``group1``
        against ``group2`` (or the rest), or of every group of ``groupby`` against the rest: one
        DataFrame, scvi-tools' columns, one block of genes per comparison."""
        _refuse(idx1=idx1, idx2=idx2, batchid1=batchid1, batchid2=batchid2,
                weights=None if weights == "uniform" else weights,
                filter_outlier_cells=filter_outlier_cells or None,
                importance_weighting_kwargs=importance_weighting_kwargs, **kwargs)  # fmt: skip
        if groupby is None:
            raise ValueError("differential_expression needs groupby (an obs column)")
        one = lambda g, what: g if g is None or isinstance(g, str) else _single(g, what)  # noqa: E731
        data = self._data_for(adata, extra_key=groupby)
        groups = (str(groupby), one(group1, "group1"), one(group2, "group2"))
        tables = self._model.differential_expression(
            data, self._ctx(None, accelerator), groups, str(mode), (float(delta), float(fdr_target)),
            bool(batch_correction),
        )  # fmt: skip
        genes = np.asarray(data.gene_names, dtype=object)
        frames = []
        for t in tables:
            order = np.asarray(t["order"], dtype=np.int64)
            cols = {}
            for name, values in t["columns"]:
                cols[name] = values if isinstance(values, str) else np.asarray(values)[order]
            frames.append(pd.DataFrame(cols, index=pd.Index(genes[order], name=None)))
        return pd.concat(frames) if frames else pd.DataFrame()

    def posterior_predictive_sample(self, adata=None, indices=None, n_samples=1, gene_list=None,
                                    batch_size=None, accelerator="auto"):  # fmt: skip
        """scvi-tools' ``posterior_predictive_sample``: counts drawn from the model. One draw: a
        scipy CSR matrix (cells x genes); several: a list of them, one per draw (scvi-tools gives
        a pydata ``sparse`` array with the draws as a third axis)."""
        import scipy.sparse as sp

        data = self._data_for(adata)
        cells = self._cells(indices)
        n = data.n_cells if cells is None else len(cells)
        draws = self._model.predictive(data, self._ctx(indices, accelerator), int(n_samples))
        mats = [sp.csr_matrix((v, i, p), shape=(n, data.n_genes)) for p, i, v in draws]
        if gene_list is not None:
            pos = {g: k for k, g in enumerate(data.gene_names)}
            missing = [g for g in gene_list if g not in pos]
            if missing:
                raise KeyError(f"gene_list: genes not in the model: {missing[:5]}")
            cols = [pos[g] for g in gene_list]
            mats = [m[:, cols] for m in mats]
        return mats[0] if n_samples == 1 else mats

    # -- saving and loading -----------------------------------------------------------------

    def save(self, dir_path, prefix=None, overwrite=False, save_anndata=False, **kwargs):
        """Write the model directory (the command line's format). An existing directory is
        replaced only with ``overwrite=True``, and only if scvi-rs wrote it."""
        if prefix is not None:
            raise _not_yet("save(prefix=...)")
        if save_anndata:
            raise _not_yet("save(save_anndata=True)")
        if kwargs:
            raise TypeError(f"save() got unexpected arguments: {', '.join(kwargs)}")
        self._model.save(os.fspath(dir_path), bool(overwrite))

    @classmethod
    def load(cls, dir_path, adata=None, accelerator="auto", device="auto", prefix=None, backup_url=None):
        """Read a model directory (``save``, or ``scvi-rs train --out``) for ``adata``, which must
        have the model's genes in the same order and its obs columns; it is set up with the
        model's keys if it was not."""
        if prefix is not None or backup_url is not None:
            raise _not_yet("load(prefix=..., backup_url=...)")
        if adata is None:
            raise ValueError("load needs adata: scvi-rs model directories do not hold the data")
        if not os.path.exists(dir_path):
            raise FileNotFoundError(f"{os.fspath(dir_path)}: no such model directory")
        self = cls.__new__(cls)
        self._model = _core.Model.load(os.fspath(dir_path))
        meta = self._meta()
        setup = adata.uns.get(_SETUP)
        layer = setup["layer"] if setup else None
        keys = [meta["setup"].get("batch_key"), meta["setup"].get("labels_key")]
        check_keys(adata, layer, keys)
        adata.uns[_SETUP] = {"layer": layer, "batch_key": keys[0], "labels_key": keys[1]}
        self.adata = adata
        self._layer = layer
        self._data_for(None)
        return self

    def to_scvi_tools(self, adata=None):
        """This model as a ``scvi.model.SCVI`` (where scvi-tools is installed), on ``adata`` (the
        training AnnData by default), with the same weights."""
        try:
            import scvi  # noqa: F401
        except ImportError as e:
            raise ImportError("to_scvi_tools needs scvi-tools (pip install scvi-tools)") from e
        from ._scvi_tools import convert

        adata = self.adata if adata is None else adata
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = os.path.join(tmp, "rs"), os.path.join(tmp, "st")
            self.save(src)
            convert(src, dst, self._layer)
            return scvi.model.SCVI.load(dst, adata=adata)

    @classmethod
    def from_scvi_tools(cls, model):
        raise _not_yet("from_scvi_tools")

    def __repr__(self):
        meta = self._meta()
        cfg = meta["model"]
        return (
            f"SCVI model (scvi-rs) with n_hidden: {cfg['n_hidden']}, n_latent: {cfg['n_latent']}, "
            f"n_layers: {cfg['n_layers']}, dropout_rate: {cfg['dropout_rate']}, dispersion: "
            f"{cfg['dispersion']}, gene_likelihood: {cfg['gene_likelihood']}, latent_distribution: "
            f"{cfg['latent_distribution']}; {len(meta['genes'])} genes, "
            f"{len(meta['batch_categories'])} batches; trained: {self.is_trained}"
        )



def _refuse(**options):
    """NotImplementedError naming the first scvi-tools option given that scvi-rs does not take."""
    for name, value in options.items():
        if value is not None:
            raise _not_yet(f"the option {name}={value!r}")


def _single(groups, what):
    if len(groups) != 1:
        raise _not_yet(f"{what} with several groups")
    return str(groups[0])
