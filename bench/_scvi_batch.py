"""scvi-tools for bench/batch.py, run in a separate interpreter (a venv with scvi-tools beside torch 2.13).

``python bench/_scvi_batch.py train IN.npz OUT.npy --seed 0 --threads 2 [--epochs N]``: SCVI with its
defaults (1 x 128 hidden, 10 latent, ZINB) and ``batch_key`` on the counts of ``IN.npz`` (``data``, ``indices``,
``indptr``, ``shape`` of a CSR matrix and ``batch``); writes the latent (cells x 10) to ``OUT.npy``.

``python bench/_scvi_batch.py ilisi IN.npz``: scib-metrics' iLISI (``ilisi_knn``, scaled to [0, 1]: 0 = batches
apart, 1 = mixed as well as the batches' sizes allow) of every latent in ``IN.npz`` (``batch`` and one array per
method), on the 90 nearest neighbours (Euclidean, scikit-learn), as scib's defaults (perplexity 30); prints one
JSON object ``{name: ilisi}``.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings


def train(a: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    import anndata
    import pandas as pd
    import scipy.sparse as sp
    import scvi

    z = np.load(a.input, allow_pickle=False)
    X = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"])).astype("float32")
    ad = anndata.AnnData(X, obs=pd.DataFrame({"batch": pd.Categorical(z["batch"].astype(str))}))
    scvi.settings.seed = a.seed
    scvi.settings.dl_num_workers = 0
    scvi.model.SCVI.setup_anndata(ad, batch_key="batch")
    model = scvi.model.SCVI(ad)
    t0 = time.perf_counter()
    model.train(max_epochs=a.epochs, accelerator="cpu", enable_progress_bar=False, logger=False,
                enable_checkpointing=False)
    np.save(a.output, np.asarray(model.get_latent_representation(), dtype=np.float32))
    print(json.dumps({"version": scvi.__version__, "seconds": time.perf_counter() - t0, "epochs": a.epochs}))


def ilisi(a: argparse.Namespace) -> None:
    import numpy as np

    warnings.filterwarnings("ignore")
    import scib_metrics
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    z = np.load(a.input, allow_pickle=False)
    batch = np.unique(z["batch"].astype(str), return_inverse=True)[1]
    out = {}
    for name in z.files:
        if name == "batch":
            continue
        Z = np.asarray(z[name], dtype=np.float32)
        dist, idx = NearestNeighbors(n_neighbors=90).fit(Z).kneighbors(Z)
        out[name] = float(scib_metrics.ilisi_knn(NeighborsResults(indices=idx, distances=dist), batch))
    print(json.dumps({"version": scib_metrics.__version__, "ilisi": out}))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=None, help="default: scVI's own")
    t.add_argument("--threads", type=int, default=2)
    i = sub.add_parser("ilisi")
    i.add_argument("input")
    a = ap.parse_args()
    {"train": train, "ilisi": ilisi}[a.cmd](a)


if __name__ == "__main__":
    main()
