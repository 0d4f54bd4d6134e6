"""Interrupted training loses nothing finished: an interrupted fit resumes to the very
weights of an uninterrupted one, and a training process killed with SIGKILL finishes,
when resumed, with the results of an uninterrupted run. (SIGTERM: tests/test_pipeline.py.)"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

from models.student import build_student
from tests.conftest import random_tensor_loaders, tiny_run_args
from utils.engine.loops import TrainingSettings, train_model
from utils.engine.losses import CrossEntropyOnly, HardLabelLoss

PROJECT = Path(__file__).resolve().parent.parent
SETTINGS = TrainingSettings(lr=0.01, epochs=3, warmup_epochs=1, weight_decay=0.01, mixup_alpha=0.4, amp=False,
                            patience=None)


def _train(checkpoint: Path, on_epoch=lambda record, replayed: None):
    """MobileNetV3-Small (it has dropout) with Mixup, trained as the pipeline trains it."""
    paddle.seed(0)
    with paddle.utils.unique_name.guard():
        model = build_student("mobilenet_v3_small", 3, "none")
        result = train_model(model, None, CrossEntropyOnly(HardLabelLoss()), *random_tensor_loaders(), SETTINGS,
                             (1, 2, 3), on_epoch, checkpoint)
    return model, result


class Interrupt(Exception):
    pass


def test_an_interrupted_fit_resumes_to_the_same_weights_and_history(tmp_path):
    uninterrupted, expected = _train(tmp_path / "a.pdparams")

    def stop_after_epoch_2(record, replayed):
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _train(tmp_path / "b.pdparams", stop_after_epoch_2)
    build_student("mobilenet_v2", 5, "none")  # other models in between shift Paddle's generated names
    seen = []
    resumed, result = _train(tmp_path / "b.pdparams", lambda record, replayed: seen.append((record.epoch, replayed)))

    assert seen == [(1, True), (2, True), (3, False)]
    assert [r.val_acc for r in result.history] == [r.val_acc for r in expected.history]
    assert [r.lr for r in result.history] == [r.lr for r in expected.history]
    for name, value in uninterrupted.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[name].numpy(), value.numpy(), rtol=0, atol=1e-6,
                                   err_msg=name)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "main.py", *args], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended before {path.name} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _fold_results(run_dir: Path) -> list[tuple]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return [(f["fold"], f["teacher_val_acc"], f["student_val_acc"], f["best_epoch"]) for f in summary["folds"]]


def _run_args(data: Path, out: Path) -> list[str]:
    return tiny_run_args(data, out, "r", "--epochs", "3")


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_and_matches_an_uninterrupted_run(tiny_data, tmp_path):
    # The uninterrupted run, in a folder of its own, trains beside the one that is killed and resumed.
    whole = _start([*_run_args(tiny_data, tmp_path / "whole"), "--quiet"])  # quiet: a pipe nobody reads yet
    args = _run_args(tiny_data, tmp_path)
    run_dir = tmp_path / "models_saved" / "r"
    process = _start(args)
    _wait_for(run_dir / "fold1" / "training_student.pdparams", process)  # fold 0 finished, fold 1 mid-way
    process.send_signal(signal.SIGKILL)
    process.wait()
    fold0 = (run_dir / "fold0" / "result.json").read_text()
    assert not (run_dir / "fold1" / "result.json").exists()

    resume = ["--resume", "r", "--output_dir", str(tmp_path / "models_saved")]
    resumed = subprocess.run([sys.executable, "main.py", *resume], cwd=PROJECT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 0 was finished by an earlier run" in resumed.stdout
    assert "fold 1: continuing from the training state" in resumed.stdout
    assert (run_dir / "fold0" / "result.json").read_text() == fold0
    assert whole.wait(timeout=300) == 0, whole.communicate()
    assert _fold_results(run_dir) == _fold_results(tmp_path / "whole" / "models_saved" / "r")
    for output in ("summary.json", "oof_predictions.csv", "fold1/best.pdparams", "fold1/history.json"):
        assert (run_dir / output).is_file(), output
    assert [r["epoch"] for r in json.loads((run_dir / "fold1" / "history.json").read_text())["student"]] == [1, 2, 3]
    assert not list(run_dir.glob("fold*/training_*"))  # the epoch states go once their fold is finished
