"""dhaka.params: one description of Dhaka's parameters, read by the Train form and the CLI."""
from __future__ import annotations

import inspect

import pytest

from dhaka import Dhaka
from dhaka.cli import build_parser, main
from dhaka.estimator import PRESETS
from dhaka.params import PARAM, PARAMS, check_params, defaults


def test_params_name_exactly_the_estimators_parameters():
    names = [n for n in inspect.signature(Dhaka.__init__).parameters if n != "self"]
    assert sorted(p.name for p in PARAMS) == sorted(names)
    assert len({p.name for p in PARAMS}) == len(PARAMS)
    assert defaults() == Dhaka().get_params()


def test_every_default_and_every_preset_value_is_valid():
    assert check_params(defaults()) == defaults()
    for name, preset in PRESETS.items():
        assert check_params(preset) == preset, name


@pytest.mark.parametrize("name, word, value", [
    ("batch_size", "auto", "auto"), ("batch_size", "128", 128), ("refine", "auto", "auto"), ("refine", "0", 0),
    ("clip_norm", "off", None), ("clip_norm", "2.5", 2.5), ("patience", "off", None), ("n_genes", "all", None),
    ("n_genes", "auto", "auto"), ("normalize", "true", True), ("log", "auto", "auto"), ("batch_norm", "no", False),
    ("structure", "deep", "deep"), ("structure", "512,128", "512,128"), ("encoder_pcs", "off", None),
    ("gene_selection", "entropy", "entropy"), ("lr", "1e-4", 1e-4),
])
def test_cli_words_map_to_values(name, word, value):
    assert PARAM[name].parse(word) == value


@pytest.mark.parametrize("name, word, expect", [
    ("batch_size", "many", "--batch-size must be 'auto' or a whole number"),
    ("epochs", "0", "--epochs must be a whole number from 1 to 5000"),
    ("lr", "2", "--lr must be a number from"), ("scale", "log", "--scale must be one of"),
    ("structure", "a,b", "structure"), ("refine", "-1", "--refine must be 'auto' or a whole number"),
])
def test_bad_words_are_refused_with_the_flag_named(name, word, expect):
    with pytest.raises(ValueError, match=expect):
        PARAM[name].parse(word)


def test_check_names_the_parameter_and_refuses_unknown_settings():
    with pytest.raises(ValueError, match="latent_dim must be a whole number from 1 to 16"):
        check_params({"latent_dim": 0})
    with pytest.raises(ValueError, match="unknown setting"):
        check_params({"latent_dims": 3})
    assert check_params({"batch_size": 64.0})["batch_size"] == 64


def test_cli_has_one_option_per_parameter_and_its_defaults_are_the_estimators():
    embed = build_parser()._subparsers._group_actions[0].choices["embed"]
    flags = {o for a in embed._actions for o in a.option_strings}
    assert {p.flag for p in PARAMS} <= flags
    args = embed.parse_args(["x.csv", "--out", "o.csv", "--batch-size", "auto", "--clip-norm", "off"])
    from dhaka.cli import _estimator_params

    assert _estimator_params(args) == {"batch_size": "auto", "clip_norm": None}


def test_cli_refuses_a_bad_setting_before_reading_the_file(capsys, tmp_path):
    assert main(["embed", str(tmp_path / "missing.csv"), "--out", "o.csv", "--patience", "soon"]) == 2
    err = capsys.readouterr().err
    assert "--patience must be 'off' or a whole number" in err and "Traceback" not in err
