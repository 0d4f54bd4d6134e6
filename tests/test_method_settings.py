"""Each distillation method declares its own settings beside its class: they are YAML keys
and flags, checked by the method's declaration, listed in --help and saved with a run."""
import argparse

import pytest

import main
from utils.distill.features import FEATURE_METHODS
from utils.distill.methods import DIST, DKD, KL, METHOD_SETTINGS, METHODS, create_method, method_settings
from utils.engine.losses import HardLabelLoss
from utils.pipeline.demo import resolve_run_config
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml, save_config
from utils.runtime.errors import ConfigError


def _resolved(*flags: str, config: str | None = None):
    return resolve_run_config(main.parse_args(["--data_dir", "somewhere", *flags, *(["--config", config] if config
                                                                                    else [])]))


def test_every_method_setting_is_declared_once_and_owned_by_its_class():
    owned = [s.name for method in [*METHODS.values(), *FEATURE_METHODS.values()]
             for s in getattr(method, "settings", ())]
    assert sorted(owned) == sorted(s.name for s in METHOD_SETTINGS)
    assert len(owned) == len(set(owned))
    assert "alpha" not in read_yaml(DEFAULT_CONFIG)  # not repeated in the core configuration


def test_flags_and_yaml_keys_reach_the_method(tmp_path):
    kl = create_method(_resolved("--kd", "kl", "--alpha", "0.7", "--temperature", "3").distill, HardLabelLoss(), 1)
    assert isinstance(kl, KL) and (kl.alpha, kl.temperature) == (0.7, 3.0)
    own = tmp_path / "own.yaml"
    own.write_text("kd: dkd\ndkd_beta: 2\ndkd_temperature: 1.5e0\ndkd_warmup: 0\n")
    dkd = create_method(_resolved(config=str(own)).distill, HardLabelLoss(), 1)
    assert isinstance(dkd, DKD) and (dkd.alpha, dkd.beta, dkd.temperature, dkd.warmup) == (1.0, 2.0, 1.5, 0)
    dist = create_method(_resolved("--kd", "dist").distill, HardLabelLoss(), 1)
    assert isinstance(dist, DIST) and (dist.beta, dist.gamma, dist.temperature) == (2.0, 2.0, 4.0)


@pytest.mark.parametrize("flags,message", [
    (["--alpha", "1.5"], "alpha must be between 0 and 1, not 1.5"),
    (["--dkd_temperature", "0"], "dkd_temperature must be in (0, 100], not 0"),
    (["--dkd_warmup", "2.5"], "dkd_warmup must be a whole number, not 2.5"),
    (["--dist_beta", "-1"], "dist_beta must be 0 or more, not -1"),
    (["--alpha", "high"], "alpha must be a number, not 'high'"),
])
def test_a_bad_method_setting_is_one_line(flags, message):
    with pytest.raises(ConfigError) as error:
        _resolved(*flags)
    assert str(error.value) == message


def test_yaml_booleans_and_strings_are_not_numbers_and_unknown_keys_are_refused(tmp_path):
    for text, message in [("alpha: true\n", "alpha must be a number, not True"),
                          ('mixup_alpha: "0.2"\n', "mixup_alpha must be a number, not '0.2'"),
                          ("epochs: yes\n", "epochs must be a whole number, not True"),
                          ("alhpa: 0.3\n", "unknown setting(s) alhpa")]:
        own = tmp_path / "own.yaml"
        own.write_text(text)
        with pytest.raises(ConfigError) as error:
            _resolved(config=str(own))
        assert str(error.value) == message
    own.write_text("lr: 1e-3\n")  # a number in YAML 1.2, and for every user
    assert _resolved(config=str(own)).optim.lr == 0.001


def test_a_run_saves_every_method_setting_and_reads_them_back(tmp_path):
    cfg = _resolved("--kd", "dkd", "--dkd_beta", "3")
    save_config(cfg, tmp_path / "config.yaml")
    saved = read_yaml(tmp_path / "config.yaml")  # its sections' keys
    assert {s.name for s in METHOD_SETTINGS} <= set(saved) and saved["dkd_beta"] == 3.0 and saved["alpha"] == 0.5
    again = build_config({**read_yaml(DEFAULT_CONFIG), **saved})
    assert method_settings(again.distill) == method_settings(cfg.distill)


def test_help_lists_each_method_setting_with_its_default_and_range(capsys):
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for setting in METHOD_SETTINGS:
        assert f"--{setting.name}" in text
        assert f"{' '.join(setting.help.split())} (default: {setting.default:g}; {setting.range_text()})" in text


def test_resume_refuses_a_method_setting_flag(tmp_path):
    args = argparse.Namespace(**{**vars(main.parse_args([])), "resume": "r", "alpha": "0.3"})
    with pytest.raises(ConfigError, match="--alpha cannot be given with it"):
        resolve_run_config(args)
