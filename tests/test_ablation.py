"""The ablation runner: one run per combination, finished ones reused, one table."""
import json
from pathlib import Path

import utils.pipeline.cross_validation as cross_validation
from utils.pipeline import ablation


def test_ablation_runs_each_combination_once_and_writes_tables(tmp_path, tiny_data, monkeypatch, capsys):
    calls = []

    def fake_run(cfg):
        calls.append((cfg.student.attention, cfg.distill.kd, cfg.outputs.run_name))
        run_dir = Path(cfg.outputs.output_dir) / cfg.outputs.run_name
        run_dir.mkdir(parents=True)
        with_teacher = cfg.distill.kd == "kl"
        summary = {"classes": ["a", "b", "c"], "student_val_acc_mean": 0.9 if with_teacher else 0.8,
                   "student_val_acc_std": 0.01, "student_val_macro_f1_mean": 0.85,
                   "teacher_val_acc_mean": 0.95 if with_teacher else None}
        (run_dir / "summary.json").write_text(json.dumps(summary))

    monkeypatch.setattr(cross_validation, "run_cross_validation", fake_run)
    args = ["--data_dir", str(tiny_data), "--output_dir", str(tmp_path), "--attentions", "none,eca",
            "--kd", "on,off", "--img_size", "32", "--student", "mobilenet_v3_small", "--ablation_name", "abl"]
    assert ablation.main(args) == 0
    assert [(a, k) for a, k, _ in calls] == [("none", "kl"), ("none", "none"), ("eca", "kl"), ("eca", "none")]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| mobilenet_v3_small | eca | on | 0.9000 ± 0.0100 |" in table
    assert "| resnet50 (teacher) | - | - | 0.9500 |" in table
    assert len((tmp_path / "abl" / "ablation.csv").read_text().strip().splitlines()) == 1 + 4 + 1

    calls.clear()  # a restart reuses every finished combination
    assert ablation.main(args) == 0
    assert calls == []
    assert "already finished" in capsys.readouterr().out


def test_ablation_refuses_unknown_names(capsys):
    assert ablation.main(["--attentions", "none,magic"]) == 2
    assert "unknown attention 'magic'" in capsys.readouterr().err
