"""Time scvi-tools' SCVI (its defaults) on a counts matrix; run by speed.py / scale.py in a venv.

Usage: ``python bench/_scvi_run.py COUNTS.npz --epochs 3 --threads 2`` prints one JSON line
``{"version": ..., "seconds_per_epoch": [...], "n_cells": ..., "batch_size": ...}``.
It runs in a separate interpreter because scvi-tools is not a dependency of dhaka
(see bench/RESULTS.md for how it was installed next to torch 2.13).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("counts")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--accelerator", default="cpu")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    import anndata
    import scipy.sparse as sp
    import scvi
    from lightning.pytorch.callbacks import Callback

    X = sp.load_npz(a.counts).tocsr().astype("float32")
    ad = anndata.AnnData(X)
    scvi.settings.seed = 0
    scvi.settings.dl_num_workers = 0
    scvi.model.SCVI.setup_anndata(ad)
    model = scvi.model.SCVI(ad)  # defaults: 1 hidden layer of 128, 10 latent, ZINB... as shipped

    class Timer(Callback):
        def __init__(self):
            self.t, self.secs = 0.0, []

        def on_train_epoch_start(self, trainer, pl_module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.secs.append(time.perf_counter() - self.t)

    timer = Timer()
    t0 = time.perf_counter()
    model.train(max_epochs=a.epochs, accelerator=a.accelerator, callbacks=[timer], enable_progress_bar=False,
                logger=False, enable_checkpointing=False)
    total = time.perf_counter() - t0
    print(json.dumps({"version": scvi.__version__, "seconds_per_epoch": timer.secs, "total": total,
                      "n_cells": int(X.shape[0]), "n_genes": int(X.shape[1]),
                      "batch_size": 128, "train_size": 0.9}))


if __name__ == "__main__":
    main()
