from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dhaka.model import VAE
from dhaka.train import DivergenceError, EpochReport, encode, fit_vae, resolve_device, split_rows


def _model(n_in, seed=0):
    torch.manual_seed(seed)
    return VAE(n_in, hidden=(16,), latent_dim=2)


@pytest.fixture
def logx(blobs_counts):
    X, y = blobs_counts
    return np.log2(X + 1), y


def test_reports_every_epoch_with_losses(logx):
    X, _ = logx
    reports: list[EpochReport] = []
    res = fit_vae(X, model=_model(X.shape[1]), epochs=4, batch_size=32, patience=None, kl_warmup=2,
                  callback=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3, 4] and len(res.history) == 4
    assert reports[0].beta == 0.5 and reports[-1].beta == 1.0
    r = reports[-1]
    assert r.n_epochs == 4 and np.isfinite(r.loss) and r.kl >= 0 and np.isfinite(r.val_loss)
    assert r.eta == 0 and r.elapsed > 0
    assert abs(r.loss - (r.reconstruction + r.beta * r.kl)) < 1e-3 * abs(r.loss)


def test_stop_event_ends_training_within_one_epoch(logx):
    X, _ = logx
    stop = threading.Event()

    def cb(report):
        if report.epoch == 2:
            stop.set()

    res = fit_vae(X, model=_model(X.shape[1]), epochs=50, batch_size=16, callback=cb, stop_event=stop)
    assert res.stopped and len(res.history) == 2
    assert not res.model.training  # kept, usable for encoding
    assert encode(res.model, X).shape == (X.shape[0], 2)


def test_stop_from_another_thread_mid_epoch(logx):
    X, _ = logx
    stop = threading.Event()
    seen = []

    def cb(report):
        seen.append(report.epoch)
        if report.epoch == 1:
            threading.Timer(0.0, stop.set).start()

    res = fit_vae(X, model=_model(X.shape[1]), epochs=200, batch_size=8, callback=cb, stop_event=stop,
                  patience=None)
    assert res.stopped and len(res.history) <= 3


def test_same_seed_same_result_and_sparse_equals_dense(logx):
    X, _ = logx
    a = fit_vae(X, model=_model(X.shape[1]), epochs=3, seed=3, patience=None)
    b = fit_vae(X, model=_model(X.shape[1]), epochs=3, seed=3, patience=None)
    c = fit_vae(sp.csr_matrix(X), model=_model(X.shape[1]), epochs=3, seed=3, patience=None)
    assert [r.loss for r in a.history] == [r.loss for r in b.history]
    np.testing.assert_allclose([r.loss for r in a.history], [r.loss for r in c.history], rtol=1e-4)
    np.testing.assert_allclose(encode(a.model, X), encode(c.model, sp.csr_matrix(X)), rtol=1e-3, atol=1e-4)


def test_divergence_raises_with_the_last_good_model(logx):
    X, _ = logx
    X = X.copy()
    bad = X.copy()
    bad[5, 3] = 1e30  # squares to inf in float32
    with pytest.raises(DivergenceError, match="diverged at epoch 1") as info:
        fit_vae(bad, model=_model(X.shape[1]), epochs=3, batch_size=512, val_fraction=0)
    assert info.value.result.history == []


def test_checkpoint_called_every_k_epochs(logx):
    X, _ = logx
    calls = []
    fit_vae(X, model=_model(X.shape[1]), epochs=6, patience=None, checkpoint=calls.append, checkpoint_every=2)
    assert calls == [2, 4, 6]


def test_early_stopping_waits_for_patience_after_the_best_epoch(logx):
    X, _ = logx
    res = fit_vae(X, model=_model(X.shape[1]), epochs=300, batch_size=16, patience=3, kl_warmup=2, lr=3e-3)
    assert res.early_stopped and len(res.history) < 300
    vals = [r.val_loss for r in res.history]
    assert res.best_epoch >= 2
    # stopped exactly `patience` epochs after the best one, which is the best after warm-up
    assert len(res.history) == res.best_epoch + 3
    # an improvement counts when it beats the best by more than 1e-4 (relative)
    assert vals[res.best_epoch - 1] <= min(vals[1:]) + 1e-4 * abs(vals[res.best_epoch - 1])
    assert all(v > vals[res.best_epoch - 1] - 1e-4 * abs(vals[res.best_epoch - 1]) for v in vals[res.best_epoch:])
    # and the kept weights are the best epoch's: re-evaluating gives its validation loss
    from dhaka.train import _evaluate, split_rows
    _, val_rows = split_rows(X.shape[0], 0.1, 0)
    import torch as _t
    again = _evaluate(res.model, X, val_rows, 16, _t.device("cpu"), _t.from_numpy(np.ascontiguousarray(X)))
    assert abs(again - vals[res.best_epoch - 1]) < 1e-3 * abs(again)


def test_training_goes_on_while_validation_improves():
    rng = np.random.default_rng(0)
    X = np.log2(rng.poisson(3, (200, 50)) + 1).astype(np.float32)
    res = fit_vae(X, model=_model(50), epochs=45, batch_size=32, kl_warmup=5, patience=30)
    assert len(res.history) == 45 and not res.early_stopped


def test_split_rows_and_device():
    tr, va = split_rows(100, 0.1, seed=0)
    assert len(tr) == 90 and len(va) == 10 and not set(tr) & set(va)
    tr, va = split_rows(10, 0.1, seed=0)  # one validation cell is no validation
    assert len(tr) == 10 and len(va) == 0
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="epochs"):
        fit_vae(np.zeros((4, 2), np.float32), model=_model(2), epochs=0)


def test_seams_are_arguments_of_the_loop(logx):
    """wrap_model, batch_norm_sync and noise change the loop from outside without replacing anything."""
    import contextlib

    from dhaka.train import TrainingSeams

    X, _ = logx
    events: list[str] = []
    drawn: list[tuple] = []

    class Step(torch.nn.Module):  # computes the training loss through the model, records the call
        def __init__(self, vae):
            super().__init__()
            self.vae = vae
            self.calls = 0

        def loss(self, x, **kw):
            self.calls += 1
            return self.vae.loss(x, **kw)

    steps = []

    @contextlib.contextmanager
    def wrap(model):
        events.append("wrap in")
        steps.append(Step(model))
        yield steps[-1]
        events.append("wrap out")

    @contextlib.contextmanager
    def sync(model):
        events.append("sync in")
        yield
        events.append("sync out")

    def noise(n, d, device):
        drawn.append((n, d))
        return torch.zeros(n, d, device=device)  # z = mu: no sampling noise at all

    seams = TrainingSeams(wrap_model=wrap, batch_norm_sync=sync, noise=noise)
    model = _model(X.shape[1])
    res = fit_vae(X, model=model, epochs=2, batch_size=64, patience=None, kl_warmup=1, val_fraction=0.0,
                  device="cpu", **seams.as_kwargs())
    assert events == ["wrap in", "sync in", "sync out", "wrap out"]
    assert steps[0].calls == len(drawn) > 0 and all(d == 2 for _, d in drawn)
    assert sum(n for n, _ in drawn) == 2 * X.shape[0]  # every training cell, every epoch
    assert res.model is model and len(res.history) == 2
    # zero noise is the posterior mean: a model's loss with eps = 0 equals its deterministic loss
    model.train()
    x = torch.as_tensor(X[:32], dtype=torch.float32)
    torch.manual_seed(0)
    a = model.loss(x, eps=torch.zeros(32, 2)).total
    torch.manual_seed(1)
    b = model.loss(x, eps=torch.zeros(32, 2)).total
    assert torch.allclose(a, b)
