"""Memory guard: estimate, limit discovery, and a clear refusal."""
from __future__ import annotations

import pytest

from dhaka import resources
from dhaka.resources import (
    ResourceError,
    check_memory,
    estimate_training_memory,
    format_bytes,
    memory_limit,
    parse_size,
    process_rss,
)

GIB = 1024**3
DEEP = (1024, 512, 256)


def est(**kw):
    args = dict(n_cells=10_000, n_genes=2_000, hidden=DEEP, latent_dim=3, batch_size=256, sparse=False)
    args.update(kw)
    return estimate_training_memory(**args)


def test_estimate_covers_preprocessing_peak():
    # 10k cells x 2k genes float32 = 80 MB; preprocessing makes ~7x that at its peak
    matrix = 10_000 * 2_000 * 4
    e = est()
    assert e >= resources.PREPROCESS_FACTOR * matrix * resources.SAFETY_FACTOR
    assert e < 2 * resources.PREPROCESS_FACTOR * matrix * resources.SAFETY_FACTOR + resources.OVERHEAD


# Peak memory above an idle process, measured by fitting dhaka.Dhaka for one epoch
# (one thread, batch 256, latent 3) on this project's machine, 2026-11.
MEASURED_PEAKS = [
    # n_cells, n_genes, n_selected, hidden, sparse, measured peak bytes
    (5_000, 3_000, 2_000, DEEP, False, 0.46 * GIB),
    (20_000, 5_000, 2_000, DEEP, False, 2.6 * GIB),
    (20_000, 20_000, 2_000, DEEP, True, 1.8 * GIB),
    (2_000, 20_000, 20_000, (1024,), False, 1.8 * GIB),
    (20_000, 5_000, 500, (1024,), False, 2.6 * GIB),
]


@pytest.mark.parametrize("n_cells, n_genes, n_selected, hidden, sparse, peak", MEASURED_PEAKS)
def test_estimate_is_above_measured_peaks(n_cells, n_genes, n_selected, hidden, sparse, peak):
    e = estimate_training_memory(n_cells, n_genes, hidden=hidden, latent_dim=3, batch_size=256, sparse=sparse,
                                 density=0.1 if sparse else None, n_selected=n_selected)
    assert peak * 1.05 <= e <= peak * 2.5


def test_estimate_grows_with_every_input():
    # a training-dominated case (few cells): every size counts
    small = dict(n_cells=2_000, n_genes=2_000)
    base = est(**small)
    assert est(**{**small, "n_cells": 4_000}) > base
    assert est(**{**small, "n_genes": 4_000}) > base
    assert est(**small, batch_size=1024) > base
    assert est(**small, hidden=(2048, 1024, 512)) > base
    assert est(**small, latent_dim=50) > base
    assert est(**small, n_selected=500) < base
    # a preprocessing-dominated case: the data size counts
    assert est(n_cells=20_000) > est() and est(n_genes=4_000) > est()


def test_sparse_storage_is_cheaper_and_density_matters():
    n_cells, n_genes = 50_000, 30_000
    dense = est(n_cells=n_cells, n_genes=n_genes, n_selected=2_000)
    sparse = est(n_cells=n_cells, n_genes=n_genes, n_selected=2_000, sparse=True, density=0.05)
    denser = est(n_cells=n_cells, n_genes=n_genes, n_selected=2_000, sparse=True, density=0.2)
    assert sparse < denser < dense
    assert est(sparse=True) == est(sparse=True, density=0.1)  # documented default
    with pytest.raises(ValueError):
        est(sparse=True, density=1.5)


def test_estimate_parameters_dominate_for_wide_inputs():
    # 100 cells but 20k genes into a 1024-wide layer: ~20M weights x 4 copies x 4 bytes x 2 (enc+dec)
    e = est(n_cells=100, n_genes=20_000)
    assert e > 2 * 20_000 * 1024 * 4 * 4


@pytest.mark.parametrize(
    "text, expected",
    [("4G", 4 * GIB), ("4g", 4 * GIB), ("4GB", 4 * GIB), ("1.5GiB", int(1.5 * GIB)), ("512M", 512 * 1024**2),
     ("1000", 1000), (" 2 gb ", 2 * GIB), (123, 123)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "four", "4X", "-1G", "0", 0, "G"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_bytes():
    assert format_bytes(6.2 * GIB) == "6.2 GB"
    assert format_bytes(4 * GIB) == "4.0 GB"
    assert format_bytes(300 * 1024**2) == "300.0 MB"
    assert format_bytes(12) == "12 B"


def test_memory_limit_env_first(monkeypatch, tmp_path):
    cg = tmp_path / "memory.max"
    cg.write_text(str(2 * GIB))
    monkeypatch.setattr(resources, "CGROUP_FILES", (str(cg),))
    monkeypatch.setenv("DHAKA_MEMORY_LIMIT", "4G")
    assert memory_limit() == 4 * GIB
    monkeypatch.setenv("DHAKA_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="DHAKA_MEMORY_LIMIT"):
        memory_limit()


def test_memory_limit_cgroup_then_ram(monkeypatch, tmp_path):
    monkeypatch.delenv("DHAKA_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(resources, "_physical_ram", lambda: 16 * GIB)
    cg = tmp_path / "memory.max"
    cg.write_text(f"{2 * GIB}\n")
    monkeypatch.setattr(resources, "CGROUP_FILES", (str(tmp_path / "absent"), str(cg)))
    assert memory_limit() == 2 * GIB
    cg.write_text(str(64 * GIB))  # a cgroup limit above physical RAM is capped at RAM
    assert memory_limit() == 16 * GIB
    cg.write_text("max\n")  # cgroup v2: no limit
    assert memory_limit() == int(16 * GIB * resources.RAM_FRACTION)
    cg.write_text(str(2**63 - 4096))  # cgroup v1: no limit
    assert memory_limit() == int(16 * GIB * resources.RAM_FRACTION)
    monkeypatch.setattr(resources, "CGROUP_FILES", ())
    assert memory_limit() == int(16 * GIB * resources.RAM_FRACTION)


def test_memory_limit_on_this_machine_is_positive(monkeypatch):
    monkeypatch.delenv("DHAKA_MEMORY_LIMIT", raising=False)
    limit = memory_limit()
    assert limit is not None and limit > 0


def test_check_memory_refuses_with_clear_message():
    with pytest.raises(ResourceError) as err:
        check_memory(int(6.2 * GIB), "4G")
    msg = str(err.value)
    assert msg.startswith("Training would need about 6.2 GB but the limit is 4.0 GB;")
    assert "fewer genes" in msg and "DHAKA_MEMORY_LIMIT" in msg
    assert isinstance(err.value, RuntimeError)


def test_check_memory_accounts_for_memory_in_use():
    assert check_memory(1 * GIB, 4 * GIB) == 3 * GIB
    with pytest.raises(ResourceError, match="already in use"):
        check_memory(1 * GIB, 4 * GIB, used=int(3.5 * GIB))


def test_check_memory_uses_env_limit(monkeypatch):
    monkeypatch.setenv("DHAKA_MEMORY_LIMIT", "1G")
    with pytest.raises(ResourceError, match="limit is 1.0 GB"):
        check_memory(est(n_cells=200_000, n_genes=5_000))
    assert check_memory(est(n_cells=300, n_genes=200, hidden=(64,), batch_size=32)) > 0


def test_process_rss_is_plausible():
    rss = process_rss()
    assert 1024**2 < rss < 64 * GIB


def test_available_memory_takes_the_smallest_known(monkeypatch, tmp_path):
    monkeypatch.delenv("DHAKA_MEMORY_LIMIT", raising=False)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert resources.available_memory(meminfo=meminfo, cgroup_root=cg) == 8000000 * 1024
    # cgroup v2: 4 GiB limit, 3 GiB used of which 1 GiB is reclaimable page cache
    (cg / "memory.max").write_text(f"{4 * GIB}\n")
    (cg / "memory.current").write_text(f"{3 * GIB}\n")
    (cg / "memory.stat").write_text(f"anon {2 * GIB}\ninactive_file {GIB}\n")
    assert resources.available_memory(meminfo=meminfo, cgroup_root=cg) == 2 * GIB
    (cg / "memory.max").write_text("max\n")  # no cgroup limit: the machine's figure
    assert resources.available_memory(meminfo=meminfo, cgroup_root=cg) == 8000000 * 1024
    # DHAKA_MEMORY_LIMIT counts this process's resident memory as in use
    monkeypatch.setenv("DHAKA_MEMORY_LIMIT", "2G")
    assert resources.available_memory(meminfo=meminfo, cgroup_root=cg, rss=GIB // 2) == GIB + GIB // 2
    assert resources.available_memory(meminfo=tmp_path / "absent", cgroup_root=cg, rss=3 * GIB) == 0
    monkeypatch.delenv("DHAKA_MEMORY_LIMIT")
    assert resources.available_memory(meminfo=tmp_path / "absent", cgroup_root=tmp_path / "absent") is None


def test_available_memory_here_is_plausible_and_trim_is_harmless(monkeypatch):
    monkeypatch.delenv("DHAKA_MEMORY_LIMIT", raising=False)
    avail = resources.available_memory()
    assert avail is None or 0 < avail < 2**50
    assert resources.trim_heap() in (True, False)


def test_check_memory_names_what_needs_it():
    with pytest.raises(ResourceError, match="^Reading big.csv would need about 2.0 GB"):
        resources.check_memory(2 * GIB, "1G", what="Reading big.csv")
