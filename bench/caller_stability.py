"""Does subsample stability decide merge / plain better than the silhouette? (issue 12; no refits)

For every embedding cached by ``bench.independent`` (seeds given by ``--seeds``) this fits BIC's mixture
once (``gmm_bic``), takes its plain and merged clusters, and scores each by

* the mean silhouette (what ``merge="auto"`` compared until this study), and
* stability (:func:`dhaka.cluster.merge_stability`, what the shipped rule calls): ``--boot`` mixtures
  with the same number of components fitted on random 80 % subsamples,
  each turned into plain and merged clusters the same way and compared (ARI, all cells) with the
  full-data clusters. A split of one blob into overlapping components moves from subsample to
  subsample; real groups stay (Ben-Hur et al. 2002; Lange et al. 2004).

Rules are then chosen on seed 0 and checked on seed 1 (held out). Prints a row per embedding and the
rule table; writes the rows to ``bench/out/caller_stability.json`` (and with ``--write`` the table to
bench/RESULTS.md).

    python -m bench.caller_stability --seeds 0 1 --boot 8 --write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import independent as B  # noqa: E402
from dhaka.cluster import MERGE_ONE_CLUSTER_STABILITY, MERGE_STABILITY_TOL, ari, gmm_bic, merge_stability, silhouette  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "caller_stability.json"


def collect(seeds, boot: int) -> list[dict]:
    rows = []
    for part in ("expression", "cnv", "real"):
        for key, _desc, make, col, _mode, methods in B._datasets(part, False, None):
            for s in seeds:
                if part == "real" and s != 0:
                    continue  # the real data have one truth; seed 1 would only refit the baselines
                files = {m: B.OUT / f"{key}__{m.replace('/', '+')}__s{s}.npz" for m in methods}
                if not any(p.exists() for p in files.values()):
                    continue
                truth = make(s).obs[col].astype(str).to_numpy()
                for m, p in files.items():
                    if not p.exists():
                        continue
                    Z = np.load(p)["Z"].astype(np.float64)
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        pl = gmm_bic(Z, seed=s, merge=False, min_cluster_size=None)
                        me = gmm_bic(Z, seed=s, merge=True)
                        mcs = me.params["min_cluster_size"]  # a count for len(Z) cells
                        st_p, st_m = merge_stability(Z, pl.model, pl.labels, me.labels,
                                                     merge_tol=me.params["merge_tol"],
                                                     min_cluster_size=None if mcs is None else mcs / len(Z),
                                                     n_boot=boot, seed=s)
                    r = {"data": key, "method": m, "seed": s, "plain": ari(truth, pl.labels), "k_plain": pl.k,
                         "merged": ari(truth, me.labels), "k_merged": me.k, "k_true": int(np.unique(truth).size),
                         "sil_plain": silhouette(Z, pl.labels, seed=s) if pl.k > 1 else float("nan"),
                         "sil_merged": silhouette(Z, me.labels, seed=s) if me.k > 1 else float("nan"),
                         "stab_plain": st_p, "stab_merged": st_m, "seconds": time.perf_counter() - t0}
                    rows.append(r)
                    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}),
                          flush=True)
    return rows


def rule_silhouette(r, gain=0.02):
    if r["k_merged"] == r["k_plain"]:
        return "merged"
    if r["k_merged"] == 1:
        return "merged"
    sm, sp = r["sil_merged"], r["sil_plain"]
    return "merged" if np.isfinite(sm) and (not np.isfinite(sp) or sm >= sp + gain) else "plain"


def rule_stability(r, gain=0.0):
    if r["k_merged"] == r["k_plain"]:
        return "merged"
    return "merged" if r["stab_merged"] >= r["stab_plain"] + gain else "plain"


def rule_shipped(r, tol=MERGE_STABILITY_TOL):
    """``gmm_bic(merge="auto")``: stability, merging kept while within ``tol`` of the plain clusters' (fewer
    clusters when both reproduce about as well); one cluster where most subsamples also merge into one."""
    if r["k_merged"] == r["k_plain"]:
        return "merged"
    if r["k_merged"] == 1:
        return "merged" if r["stab_merged"] >= MERGE_ONE_CLUSTER_STABILITY else "plain"
    return "merged" if r["stab_merged"] >= r["stab_plain"] - tol else "plain"


def rule_both(r, gain=0.0):
    """Merged where it is both more stable and (for k > 1) not less compact."""
    if r["k_merged"] == r["k_plain"]:
        return "merged"
    if r["stab_merged"] < r["stab_plain"] + gain:
        return "plain"
    if r["k_merged"] == 1:
        return "merged"
    return "merged" if r["sil_merged"] >= r["sil_plain"] else "plain"


RULES = {
    "always merge": lambda r: "merged",
    "never merge": lambda r: "plain",
    "silhouette +0.02 (the rule before)": rule_silhouette,
    "stability": rule_stability,
    "stability, one cluster if >= 0.5 (shipped until 2026-12-03 19:30)": lambda r: rule_shipped(r, 0.0),
    "the same, merged within 0.01": lambda r: rule_shipped(r, 0.01),
    f"the same, merged within {MERGE_STABILITY_TOL} (shipped)": rule_shipped,
    "the same, merged within 0.03": lambda r: rule_shipped(r, 0.03),
    "stability +0.02": lambda r: rule_stability(r, 0.02),
    "stability +0.05": lambda r: rule_stability(r, 0.05),
    "stability +0.10": lambda r: rule_stability(r, 0.10),
    "stability and silhouette": rule_both,
}


def table(rows: list[dict]) -> str:
    """The rule table per seed, as markdown."""
    out = []
    for s in sorted({r["seed"] for r in rows}):
        sub = [r for r in rows if r["seed"] == s]
        dh = [r for r in sub if r["method"].startswith("dhaka")]
        out += [f"\nseed {s}: {len(dh)} Dhaka latents, {len(sub)} embeddings\n",
                "| rule | misses, Dhaka | mean ARI, Dhaka | misses, all | mean ARI, all | Dhaka misses |",
                "|---|---|---|---|---|---|"]
        for name, rule in RULES.items():
            def score(rs):
                got = [r[rule(r)] for r in rs]
                gaps = [max(r["plain"], r["merged"]) - g for r, g in zip(rs, got)]
                return sum(g > 0.05 for g in gaps), float(np.mean(got)), gaps
            md, ad, gd = score(dh)
            ma, aa, _ = score(sub)
            which = ", ".join(f"{r['data']}/{r['method']} ({-g:+.2f})" for r, g in zip(dh, gd) if g > 0.05)
            out.append(f"| {name} | {md} | {ad:.3f} | {ma} | {aa:.3f} | {which} |")
    return "\n".join(out).strip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--boot", type=int, default=8)
    ap.add_argument("--cached", action="store_true", help=f"only print the table from {OUT.name}")
    ap.add_argument("--verify", action="store_true",
                    help="with --cached: also run the shipped gmm_bic() on every embedding and compare with the rule")
    ap.add_argument("--write", action="store_true", help="write the caller_stability section of bench/RESULTS.md")
    a = ap.parse_args(argv)
    from bench.common import command_line, machine_description, write_section

    machine = machine_description()
    if a.cached:
        rows = json.loads(OUT.read_text())
    else:
        rows = collect(a.seeds, a.boot)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(rows, indent=1))
    text = table(rows)
    print(text)
    if a.verify:
        verify(rows)
    if a.write:
        write_section("caller_stability", "Every embedding `bench.independent` cached (no refits): BIC's mixture "
                      "turned into plain and merged clusters, one picked by each rule. A miss is an embedding where "
                      "the rule is more than 0.05 ARI below the better of the two. Seed 0 chose the rule, seed 1 is "
                      "held out.\n\n" + text, title="Merge or plain: the caller's rule",
                      machine=machine, command=command_line("python -m bench.caller_stability", argv))
    return 0


def verify(rows: list[dict]) -> None:
    """The shipped ``gmm_bic()`` (merge="auto") against the study's "shipped" rule, embedding by embedding."""
    truths: dict = {}
    for part in ("expression", "cnv", "real"):
        for key, _desc, make, col, _mode, _methods in B._datasets(part, False, None):
            truths[key] = (make, col)
    differ = 0
    for r in rows:
        make, col = truths[r["data"]]
        truth = make(r["seed"]).obs[col].astype(str).to_numpy()
        Z = np.load(B.OUT / f"{r['data']}__{r['method'].replace('/', '+')}__s{r['seed']}.npz")["Z"].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = ari(truth, gmm_bic(Z, seed=r["seed"]).labels)
        want = r[rule_shipped(r)]
        if abs(got - want) > 1e-9:
            differ += 1
            print(f"differs: {r['data']}/{r['method']} s{r['seed']}: gmm_bic() {got:.3f}, rule {want:.3f}", flush=True)
    print(f"verify: gmm_bic() matches the shipped rule on {len(rows) - differ} of {len(rows)} embeddings")


if __name__ == "__main__":
    raise SystemExit(main())
