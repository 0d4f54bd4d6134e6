from pathlib import Path

import numpy as np
import paddle
import pytest

from utils.data.splits import make_folds
from utils.engine.optimization import build_optimizer, warmup_cosine


def _lrs(schedule, steps):
    values = []
    for _ in range(steps):
        values.append(schedule.get_lr())
        schedule.step()
    return values


def test_warmup_then_cosine_values():
    base, epochs, warmup, steps_per_epoch = 0.1, 5, 1, 10
    lrs = _lrs(warmup_cosine(base, epochs, warmup, steps_per_epoch), epochs * steps_per_epoch)
    # Linear warmup from 0 over the first 10 steps.
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(0.05)
    # Then cosine from the base rate towards 0 over the remaining 40 steps.
    assert lrs[10] == pytest.approx(base)
    assert lrs[30] == pytest.approx(base * 0.5 * (1 + np.cos(np.pi * 20 / 40)))
    assert lrs[-1] < 0.01 * base
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_warmup_is_capped_so_short_runs_still_decay():
    lrs = _lrs(warmup_cosine(0.1, 2, 5, 4), 8)
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < lrs[4]


def test_no_weight_decay_on_norm_and_bias():
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    optimizer = build_optimizer(model, warmup_cosine(0.1, 2, 0, 1), 0.5)
    decayed = {p.name for p in model.parameters() if optimizer._apply_decay_param_fun(p.name)}
    assert decayed == {model[0].weight.name}


def test_stratified_folds_cover_every_image_once():
    labels = np.repeat(np.arange(3), [10, 20, 7])
    folds = make_folds(labels, 5, seed=0)
    val = np.concatenate([f.val_indices for f in folds])
    assert sorted(val) == list(range(len(labels)))
    for fold in folds:
        assert not set(fold.train_indices) & set(fold.val_indices)
        # Stratified: each validation fold holds each class in proportion.
        counts = np.bincount(labels[fold.val_indices], minlength=3)
        assert counts.tolist() in ([2, 4, 1], [2, 4, 2])
    again = make_folds(labels, 5, seed=0)
    assert all((a.val_indices == b.val_indices).all() for a, b in zip(folds, again))


def test_help_shows_every_settings_comment_default_and_group(capsys):
    import main
    from utils.runtime.config import _field_types, setting_docs

    docs = setting_docs()
    assert sorted(doc.key for doc in docs) == sorted(_field_types())
    assert all(doc.comment for doc in docs), [doc.key for doc in docs if not doc.comment]
    with pytest.raises(SystemExit):
        main.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for doc in docs:
        assert f"--{doc.key}" in text
        assert " ".join(doc.comment.split())[:30] in text, doc.key
    for section in ("Data:", "Augmentation:", "Student:", "Teacher:", "Distillation:", "Optimisation:", "Runtime:",
                    "Outputs:"):
        assert section in text
    assert "--kd KD none: cross-entropy only (the baseline) | kl | dkd | dist" in text
    assert "(default: mobilenet_v2)" in text


def test_a_split_file_gives_the_folds(tmp_path, capsys):
    """--split_file: another tool's folds (the benchmarks train PyTorch and this project on the same ones)."""
    import json

    import main
    from tests.conftest import expect_error, make_class_folders, tiny_run_args

    data = make_class_folders(tmp_path / "data", per_class=6)
    names = sorted(str(path.relative_to(data)) for path in data.rglob("*.png"))
    assignment = {name: int(name.endswith(("_0.png", "_1.png", "_2.png"))) for name in names}
    split = tmp_path / "split.json"
    split.write_text(json.dumps(assignment))
    assert main.main(tiny_run_args(data, tmp_path, "s", "--kd", "none", "--split_file", str(split))) == 0
    folds = json.loads((tmp_path / "models_saved" / "s" / "folds.json").read_text())
    assert {str(Path(path).relative_to(data)): fold for path, fold in folds.items()} == assignment
    del assignment[names[0]]
    split.write_text(json.dumps(assignment))
    code = main.main(tiny_run_args(data, tmp_path, "t", "--kd", "none", "--split_file", str(split)))
    expect_error(capsys, code, f"gives no fold for 1 image(s) ({names[0]})")
    assert not (tmp_path / "models_saved" / "t").exists()  # found before anything was written
