"""The configuration in sections: default.yaml and config.yaml are written in sections, flags
keep their names and --help groups them by section, flat files (every config.yaml saved before
sections) still load and resume, and no layer below the pipeline sees the whole configuration."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

import main
from tests.conftest import make_class_folders
from utils.runtime.config import DEFAULT_CONFIG, SECTIONS, build_config, load_saved_config, read_yaml
from utils.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BELOW_THE_PIPELINE = ["utils/distill", "utils/data", "utils/engine", "utils/deploy", "utils/reporting", "models",
                      "kernels"]


def test_default_yaml_is_written_in_sections_and_every_key_has_its_own():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert list(raw) == list(SECTIONS)
    cfg = build_config({**read_yaml(DEFAULT_CONFIG), "data_dir": "x"})
    for name, section in SECTIONS.items():
        assert set(raw[name]) == set(section.__dataclass_fields__) - {"methods"}
        assert type(getattr(cfg, name)) is section
    assert cfg.optim.lr == raw["optim"]["lr"] and cfg.teacher.teacher == raw["teacher"]["teacher"]


def test_a_key_in_another_sections_place_is_refused_in_one_line(tmp_path):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("optim:\n  teacher_lr: 0.01\n")
    with pytest.raises(ConfigError, match="teacher_lr belongs in the section teacher, not optim"):
        read_yaml(wrong)
    method = tmp_path / "method.yaml"
    method.write_text("distill:\n  kd: dist\n  dist_beta: 1.5\noptim:\n  lr: 0.01\nepochs: 3\n")  # both, mixed
    assert read_yaml(method) == {"kd": "dist", "dist_beta": 1.5, "lr": 0.01, "epochs": 3}


def test_help_groups_the_flags_by_section(capsys):
    with pytest.raises(SystemExit):
        main.main(["--help"])
    text = capsys.readouterr().out
    titles = ["Data:", "Augmentation:", "Student:", "Teacher:", "Distillation:", "Optimisation:", "Runtime:",
              "Outputs:"]
    positions = [text.index(f"\n{title}") for title in titles]
    assert positions == sorted(positions)
    options = text.index("\noptions:")  # after the usage lines, which name every flag too
    assert positions[5] < text.index("--lr LR", options) < positions[6]  # --lr under Optimisation
    assert positions[3] < text.index("--teacher_lr LR", options) < positions[4]


def test_a_run_saved_with_a_flat_config_resumes(tmp_path):
    """tests/fixtures/flat_config.yaml was written by the code before sections (flat keys, a
    method setting among them); a run holding it continues, and its settings stay the same."""
    data = make_class_folders(tmp_path / "data", per_class=6)
    out = tmp_path / "out"
    text = FIXTURES.joinpath("flat_config.yaml").read_text()
    text = text.replace("DATA", str(data)).replace("OUT", str(out / "models_saved")).replace("LOGS", str(out / "logs"))
    run_dir = out / "models_saved" / "flat"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(text)
    before = load_saved_config(run_dir / "config.yaml").to_dict()
    assert before["dist_beta"] == 1.5 and before["kd"] == "dist"
    assert main.main(["--resume", "flat", "--output_dir", str(out / "models_saved")]) == 0
    assert (run_dir / "summary.json").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert list(saved) == list(SECTIONS) and saved["distill"]["dist_beta"] == 1.5
    assert load_saved_config(run_dir / "config.yaml").to_dict() == before


def test_no_layer_below_the_pipeline_imports_the_whole_configuration():
    for folder in BELOW_THE_PIPELINE:
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "utils.runtime.config":
                    names = {alias.name for alias in node.names}
                    assert "Config" not in names, f"{path.relative_to(ROOT)} imports Config"
