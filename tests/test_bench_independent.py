"""bench.independent's embedding cache: a variant's cache is re-read only for the settings that made it."""
from __future__ import annotations

import numpy as np


def test_variant_cache_is_reread_only_for_its_own_settings(tmp_path, monkeypatch):
    from bench import independent

    calls = []

    def fake_embed(adata, method, mode, seed, params=None):
        calls.append(params)
        return np.full((3, 3), float(len(calls))), 0.1, {}

    monkeypatch.setattr(independent, "OUT", tmp_path)
    monkeypatch.setattr(independent, "_embed", fake_embed)
    monkeypatch.setattr(independent, "code_version", lambda: "test")
    a = {"kl_weight": 0.5}
    Z1, _, info = independent.cached_embedding("d", None, "dhaka-v", "expression", 0, params=a)
    Z2, _, _ = independent.cached_embedding("d", None, "dhaka-v", "expression", 0, params=dict(a))
    assert calls == [a] and info["params"] == a and np.array_equal(Z1, Z2)
    Z3, _, info = independent.cached_embedding("d", None, "dhaka-v", "expression", 0, params={"kl_weight": 2.0})
    assert len(calls) == 2 and info["params"] == {"kl_weight": 2.0} and Z3[0, 0] == 2.0
    independent.cached_embedding("d", None, "dhaka", "expression", 0)  # the default method: no settings to compare
    independent.cached_embedding("d", None, "dhaka", "expression", 0)
    assert len(calls) == 3
