"""scvi-tools' side of a seed, run by the driver as a child process of its own so that its peak RSS
and its thread pools are its own:

    python scvi_tools_child.py train JOB.json      # setup_anndata, SCVI(...).train(...), model.save
    python scvi_tools_child.py evaluate JOB.json   # SCVI.load, get_elbo / get_reconstruction_error /
                                                   # get_marginal_ll / get_latent_representation

JOB.json (written by runner_scvi_tools.py) names the data, keys, options, seed, threads, device,
the split (scvi-rs's, given as external_indexing) and where to write. Training and evaluation are two
processes so that the training process's peak RSS is that of training alone, as for scvi-rs.
"""

import json
import sys
import time


def _torch(job):
    # Before anything else imports torch's thread pools.
    import torch
    torch.set_num_threads(job["threads"])
    return torch


def _accelerator(job):
    return "gpu" if job["device"] == "cuda" else "cpu"


def _versions(torch):
    import anndata
    import lightning
    import numpy
    import scvi
    return {"scvi-tools": scvi.__version__, "torch": torch.__version__, "lightning": lightning.__version__,
            "anndata": anndata.__version__, "numpy": numpy.__version__}


def train(job):
    torch = _torch(job)
    import anndata
    import numpy as np
    import scvi
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        """Seconds per epoch as scvi-rs's history.csv counts them: from the start of one training
        epoch to the start of the next (validation included), the last one to the end of training."""

        def __init__(self):
            self.starts, self.end = [], None

        def on_train_epoch_start(self, trainer, module):
            self.starts.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            self.end = time.perf_counter()

    scvi.settings.seed = job["seed"]
    with open(job["split"]) as f:
        split = json.load(f)
    adata = anndata.read_h5ad(job["data"])
    scvi.model.SCVI.setup_anndata(adata, batch_key=job["batch_key"], labels_key=job["labels_key"])
    model = scvi.model.SCVI(adata, **job["model_options"])
    timer = EpochTimer()
    indexing = [np.asarray(split["train"], dtype=int), np.asarray(split["validation"], dtype=int),
                np.asarray([], dtype=int)]
    kwargs = dict(max_epochs=job["max_epochs"], accelerator=_accelerator(job), devices=1,
                  enable_progress_bar=False, check_val_every_n_epoch=1, callbacks=[timer],
                  datasplitter_kwargs={"external_indexing": indexing})
    if job.get("batch_size") is not None:
        kwargs["batch_size"] = job["batch_size"]
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.train(**kwargs)
    train_call_s = time.perf_counter() - t0
    bounds = timer.starts + [timer.end]
    history = {}
    for key in ["elbo_train", "elbo_validation", "reconstruction_loss_train", "reconstruction_loss_validation",
                "kl_local_train", "kl_local_validation"]:
        if key in model.history:
            history[key] = [float(v) for v in model.history[key].iloc[:, 0].to_numpy()]
    model.save(job["model_dir"], overwrite=True, save_anndata=False)
    shown = {k: v for k, v in kwargs.items() if k not in ("callbacks", "datasplitter_kwargs")}
    result = {
        "epoch_seconds": [b - a for a, b in zip(bounds, bounds[1:], strict=False)],
        "train_call_s": train_call_s,
        "history": history,
        "torch_threads": torch.get_num_threads(),
        "versions": _versions(torch),
        "calls": [
            f"scvi.settings.seed = {job['seed']}",
            f"SCVI.setup_anndata(adata, batch_key={job['batch_key']!r}, labels_key={job['labels_key']!r})",
            f"model = SCVI(adata{''.join(f', {k}={v!r}' for k, v in job['model_options'].items())})",
            "model.train(" + ", ".join(f"{k}={v!r}" for k, v in shown.items())
            + ", callbacks=[EpochTimer()], datasplitter_kwargs={'external_indexing': [train, validation, []]})",
        ],
    }
    if job["device"] == "cuda":
        result["gpu_torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu_torch_max_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        result["gpu_name"] = torch.cuda.get_device_name()
    with open(job["result"], "w") as f:
        json.dump(result, f)


def evaluate(job):
    _torch(job)
    import anndata
    import numpy as np
    import scvi

    scvi.settings.seed = job["seed"]
    with open(job["split"]) as f:
        heldout = np.asarray(json.load(f)["heldout"], dtype=int)
    adata = anndata.read_h5ad(job["data"])
    model = scvi.model.SCVI.load(job["model_dir"], adata=adata, accelerator=_accelerator(job))
    timings = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        v = fn()
        timings[name] = time.perf_counter() - t0
        return v

    elbo = timed("elbo", lambda: float(model.get_elbo(indices=heldout)))
    rec = timed("reconstruction_error", lambda: model.get_reconstruction_error(indices=heldout))
    mll = timed("marginal_ll", lambda: float(model.get_marginal_ll(indices=heldout, n_mc_samples=job["n_mc_samples"])))
    z = timed("latent", lambda: model.get_latent_representation(indices=heldout))
    np.save(job["latent"], np.asarray(z, dtype=np.float32))
    result = {
        "source": "scvi-tools get_elbo / get_reconstruction_error / get_marginal_ll",
        "elbo": elbo,
        "reconstruction_error": float(rec["reconstruction_loss"]),
        "marginal_ll": mll,
        "seconds": timings,
        "calls": [
            "model.get_elbo(indices=heldout)",
            "model.get_reconstruction_error(indices=heldout)['reconstruction_loss']",
            f"model.get_marginal_ll(indices=heldout, n_mc_samples={job['n_mc_samples']})",
            "model.get_latent_representation(indices=heldout)",
        ],
    }
    with open(job["result"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("train", "evaluate"):
        sys.exit("usage: scvi_tools_child.py train|evaluate JOB.json")
    with open(sys.argv[2]) as f:
        job = json.load(f)
    {"train": train, "evaluate": evaluate}[sys.argv[1]](job)
