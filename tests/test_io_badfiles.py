"""Every entry of the bad-file corpus is refused with a DataError that says why."""
from __future__ import annotations

import io

import pytest

from dhaka.io import DataError, read
from tests.badfiles import EXPECTED, LOADS_OK, READS_AS, make_bad_corpus, message_ok

BAD = sorted(set(EXPECTED) - LOADS_OK)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_bad_corpus(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("name", BAD)
def test_bad_file_from_path(corpus, name):
    keywords, kwargs = EXPECTED[name]
    path = corpus[name]
    with pytest.raises(DataError) as err:
        read(path, **kwargs)
    msg = str(err.value)
    assert message_ok(name, msg), f"{name}: message {msg!r} lacks one of {keywords}"
    assert path.name in msg, f"{name}: message does not name the file: {msg!r}"


@pytest.mark.parametrize("name", BAD)
def test_bad_file_as_upload(corpus, name):
    """The same files given as an upload (file-like object with .name) fail the same way."""
    keywords, kwargs = EXPECTED[name]
    path = corpus[name]
    upload = io.BytesIO(path.read_bytes())
    upload.name = path.name
    with pytest.raises(DataError) as err:
        read(upload, **kwargs)
    assert message_ok(name, str(err.value)), str(err.value)


@pytest.mark.parametrize("name", BAD)
def test_bad_file_as_bytes(corpus, name):
    keywords, kwargs = EXPECTED[name]
    path = corpus[name]
    with pytest.raises(DataError) as err:
        read(path.read_bytes(), filename=path.name, **kwargs)
    assert message_ok(name, str(err.value)), str(err.value)


def test_two_by_two_is_the_minimum_and_loads(corpus):
    adata = read(corpus["two_by_two"])
    assert adata.shape == (2, 2)
    assert list(adata.obs_names) == ["c1", "c2"]
    assert list(adata.var_names) == ["g1", "g2"]
    assert adata.X.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize("name", sorted(LOADS_OK))
def test_loadable_entries_read_exactly_as_written(corpus, name):
    """Nothing accepted with values moved, summed or transposed."""
    obs, var, X = READS_AS[name]
    adata = read(corpus[name])
    assert list(adata.obs_names) == obs
    assert list(adata.var_names) == var
    assert adata.X.tolist() == X


def test_every_loadable_entry_says_what_it_reads_as():
    assert set(READS_AS) == set(LOADS_OK)


def test_corpus_is_complete(corpus):
    required = {
        "empty", "header_only", "non_numeric", "ragged_rows", "nan", "inf", "negative_counts",
        "duplicate_cells", "duplicate_genes", "binary_garbage_csv", "truncated_gz",
        "zip_without_matrix", "zip_traversal", "h5ad_not_hdf5", "pickle_npz", "pickle_h5ad",
        "one_cell", "one_gene", "two_by_two", "mtx_huge_shape", "zip_bomb", "zip_symlink",
    }
    assert required <= set(corpus)
    assert all(p.exists() for p in corpus.values())
    assert set(corpus) == set(EXPECTED)


def test_pickles_are_never_unpickled(corpus, monkeypatch):
    import pickle

    def boom(*a, **k):  # pragma: no cover - failing here is the bug
        raise AssertionError("pickle.load was called")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    for name in ("pickle_npz", "pickle_h5ad", "npz_object_array"):
        with pytest.raises(DataError, match="(?i)pickle"):
            read(corpus[name])


def test_refused_zip_writes_nothing(corpus, tmp_path):
    from dhaka.io import unzip_safe

    dest = tmp_path / "out"
    for name in ("zip_traversal", "zip_absolute", "zip_symlink", "zip_bomb"):
        with pytest.raises(DataError):
            unzip_safe(corpus[name].read_bytes(), dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
