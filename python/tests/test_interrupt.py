"""Ctrl-C during train (SIGINT, as a terminal or a notebook's interrupt sends it): the first stops
after the epoch under way and leaves the model of that epoch (the same, bit for bit, as training
that many epochs); a second stops at once with KeyboardInterrupt and leaves the model untouched.
Also: the interpreter lock is released while training runs."""

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import scvi_rs
from conftest import simulated


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own Ctrl-C handler, as in a terminal or a notebook: a process started in the
    background (CI, `cmd &`) inherits SIGINT ignored, and Python then installs no handler."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _adata():
    adata = simulated(n_cells=3000, n_genes=200)
    scvi_rs.SCVI.setup_anndata(adata, batch_key="batch")
    return adata


def _sigint_after(*delays):
    pid = os.getpid()

    def fire():
        for d in delays:
            time.sleep(d)
            os.kill(pid, signal.SIGINT)

    threading.Thread(target=fire, daemon=True).start()


def test_first_ctrl_c_keeps_the_model_of_the_last_finished_epoch():
    adata = _adata()
    model = scvi_rs.SCVI(adata)
    _sigint_after(0.5)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        model.train(max_epochs=400, accelerator="cpu", progress_bar=False)
    assert any("interrupted" in str(x.message) for x in w)
    n = len(model.history["elbo_train"])
    assert 1 <= n < 400, n
    z = model.get_latent_representation()
    same = scvi_rs.SCVI(adata)
    same.train(max_epochs=n, accelerator="cpu", progress_bar=False)
    assert np.array_equal(z, same.get_latent_representation())


def test_second_ctrl_c_stops_at_once_and_keeps_the_old_model(monkeypatch):
    """Both interrupts arrive during the first epoch's progress call (deterministic: the watcher
    sees each, as its 100 ms poll runs while the call sleeps)."""
    import scvi_rs._model as m

    class TwoInterrupts:
        def __init__(self, enabled):
            pass

        def __call__(self, epoch, max_epochs, record):
            if epoch == 0:
                for _ in range(2):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.3)

    monkeypatch.setattr(m, "_Progress", TwoInterrupts)
    adata = _adata()
    model = scvi_rs.SCVI(adata)
    z0 = model.get_latent_representation()
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=400, accelerator="cpu")
    assert not model.is_trained
    assert np.array_equal(model.get_latent_representation(), z0)
    # The stop request is forgotten: the next call runs normally.
    monkeypatch.undo()
    model.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    assert model.is_trained


def test_training_releases_the_interpreter_lock():
    adata = _adata()
    model = scvi_rs.SCVI(adata)
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(1)
            time.sleep(0.01)

    t = threading.Thread(target=count)
    t.start()
    t0 = time.time()
    model.train(max_epochs=3, accelerator="cpu", progress_bar=False)
    elapsed = time.time() - t0
    done.set()
    t.join()
    # With the lock held, the counting thread would not run at all during training.
    assert len(ticks) > 0.3 * elapsed / 0.01, (len(ticks), elapsed)
