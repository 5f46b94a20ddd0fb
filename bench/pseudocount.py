"""The value transform on the app's count demos: log2(x + 1), the shifted log log2(1 + x / 2), Pearson residuals.

    python -m bench.pseudocount [--seeds 3] [--demos trajectory counts] [--transforms log1 log2 pearson] [--write]

For each demo with raw counts (``trajectory``: truth obs['branch'] and the true time; ``counts``: obs['group'])
and model seeds 0..N-1, the default ``Dhaka`` with each transform (``value_transform="log"`` with
``log_pseudocount`` 1 or 2, or ``value_transform="pearson"``), clustered as the app does
(``gmm_bic`` with ``latent_merge``). Prints ARI and k, and for the trajectory the R^2 of the true time on a
quadratic of the latent (how well the latent keeps the pseudotime). Rows go to bench/out/pseudocount.json.
The grid of independent data for the same question is ``python -m bench.independent --variant``.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
TRUTH = {"trajectory": "branch", "counts": "group"}
TRANSFORMS = {"log1": dict(value_transform="log", log_pseudocount=1.0),
              "log2": dict(value_transform="log", log_pseudocount=2.0),
              "pearson": dict(value_transform="pearson")}


def run(demos=("trajectory", "counts"), seeds=(0, 1, 2), transforms=tuple(TRANSFORMS)) -> list[dict]:
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import PolynomialFeatures

    from dhaka import Dhaka, simulate
    from dhaka.cluster import ari, gmm_bic, latent_merge

    rows = []
    for demo in demos:
        a = simulate.load(demo)
        y = a.obs[TRUTH[demo]].astype(str).to_numpy()
        for seed in seeds:
            for c in transforms:
                t = time.perf_counter()
                est = Dhaka(seed=seed, **TRANSFORMS[c]).fit(a)
                Z = est.transform(a)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = gmm_bic(Z, seed=seed, merge=latent_merge("expression"))
                row = {"demo": demo, "seed": seed, "c": c, "ari": float(ari(y, r.labels)),
                       "k": int(np.unique(r.labels).size), "k_true": int(np.unique(y).size),
                       "seconds": time.perf_counter() - t}
                if "time" in a.obs:
                    P = PolynomialFeatures(2).fit_transform(Z)
                    tt = a.obs["time"].to_numpy(float)
                    row["time_r2"] = float(LinearRegression().fit(P, tt).score(P, tt))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| demo | seed | transform | ARI | k (true) | time R^2 | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tr = f"{r['time_r2']:.3f}" if "time_r2" in r else ""
        out.append(f"| {r['demo']} | {r['seed']} | {r['c']} | {r['ari']:.2f} | {r['k']} ({r['k_true']}) | {tr} | "
                   f"{r['seconds']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--demos", nargs="+", default=list(TRUTH), choices=list(TRUTH))
    ap.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    ap.add_argument("--write", action="store_true", help="write the pseudocount section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    from bench.common import command_line, machine_description, write_section

    machine = machine_description()
    print(machine)
    rows = run(tuple(args.demos), tuple(range(args.seeds)), tuple(args.transforms))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pseudocount.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    if args.write:
        write_section("pseudocount", "The default `Dhaka` on the app's count demos under each value transform "
                      "(`log1` = log2(x + 1), `log2` = log2(1 + x / 2), `pearson` = Pearson residuals), clustered as "
                      "the app does; `time R^2`: the true time on a quadratic of the latent (trajectory only).\n\n"
                      + table(rows), title="Value transform on the app's count demos", machine=machine,
                      command=command_line("python -m bench.pseudocount", argv))


if __name__ == "__main__":
    main()
