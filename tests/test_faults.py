"""Faults of the machine and mistakes in resuming: each is one line that says what to do."""
import errno
import pickle
import shutil

import numpy as np
import paddle
import pytest

import main
import utils.pipeline.folds as folds
from models.student import build_student
from models.teacher import build_teacher
from tests.conftest import tiny_run_args
from utils.deploy.export import save_inference_model
from utils.pipeline.disk import SMALL_FILES_MB, RemainingWork, needed_mb, weights_bytes
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml
from utils.runtime.errors import disk_trouble
from utils.runtime.weights_file import save_weights_file


def _one_line_error(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err
    return err


def test_an_output_dir_that_cannot_be_created_stops_before_training(tiny_data, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    args = tiny_run_args(tiny_data, tmp_path, "r") + ["--output_dir", str(tmp_path / "a_file" / "runs")]
    _one_line_error(capsys, main.main(args), "cannot write to")


def test_a_nearly_full_disk_stops_before_training(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 2**20, 2**20))
    err = _one_line_error(capsys, main.main(tiny_run_args(tiny_data, tmp_path, "r")), "only 1 MB free")
    assert "the work left (2 fold(s), 2 teacher(s)) writes up to" in err
    assert not (tmp_path / "models_saved" / "r" / "fold0").exists()


def test_the_disk_needed_is_counted_from_the_work_left():
    # A ResNet50 teacher (23.5 M parameters, 90 MB a copy) kept once and checkpointed while it
    # trains (8 copies at the peak); stored views; finished work needs room for small files only.
    cfg = build_config({**read_yaml(DEFAULT_CONFIG), "teacher": "resnet50", "teacher_views": 4, "epochs": 10})
    teacher_mb = weights_bytes(build_teacher(3, "none", "resnet50")[0]) / 2**20
    one_teacher = needed_mb(cfg, 3, RemainingWork(students=0, teachers=1, labelled_images=0, processes=1))
    assert 9 * teacher_mb < one_teacher - SMALL_FILES_MB < 9 * teacher_mb + 2
    views = needed_mb(cfg, 3, RemainingWork(students=0, teachers=0, labelled_images=2**20, processes=1))
    assert views - SMALL_FILES_MB == 1 + 4 * 3 * 2  # 4 views of 3 float16 logits for 2**20 images, in MB
    assert needed_mb(cfg, 3, RemainingWork(0, 0, 0, 1)) == SMALL_FILES_MB + 1


def test_a_disk_full_while_saving_names_the_file(tmp_path, monkeypatch):
    def paddle_save_on_a_full_disk(content, path):
        raise OSError(errno.ENOSPC, "No space left on device")  # as paddle.save raises it: no file name

    monkeypatch.setattr(paddle, "save", paddle_save_on_a_full_disk)
    target = tmp_path / "fold0" / "training_student.pdparams"
    with pytest.raises(OSError) as raised:
        save_weights_file(target, {"w": np.zeros(3, np.float32)})
    assert raised.value.filename == str(target)
    # pickled as a fold worker sends it back, it still names the file
    assert disk_trouble(pickle.loads(pickle.dumps(raised.value))) == f"the disk is full (writing {target})"


@pytest.mark.parametrize("cut", ["model.pdiparams", "model.json"])
def test_an_export_cut_short_by_a_full_disk_is_an_error_naming_the_file(tmp_path, monkeypatch, cut):
    """paddle.jit.save returns without an error on a full disk, its files cut short (measured on a
    6 MB tmpfs); the export notices instead of leaving a model that fails to load later."""
    real_save = paddle.jit.save

    def save_on_a_full_disk(layer, path, **kwargs):
        real_save(layer, path, **kwargs)
        written = tmp_path / cut
        written.write_bytes(written.read_bytes()[: written.stat().st_size // 2])

    monkeypatch.setattr(paddle.jit, "save", save_on_a_full_disk)
    model = build_student("mobilenet_v3_small", 3, width=0.5)
    model.eval()
    with pytest.raises(OSError) as raised:
        save_inference_model(model, 32, tmp_path)
    assert disk_trouble(raised.value) == f"the disk is full (writing {tmp_path / cut})"
    monkeypatch.setattr(paddle.jit, "save", real_save)
    save_inference_model(model, 32, tmp_path / "whole")  # a complete export passes the check


def test_a_disk_that_fills_up_mid_run_says_how_to_continue(tiny_data, tmp_path, capsys, monkeypatch):
    def full(fold_dir, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(fold_dir / "best.pdparams"))

    monkeypatch.setattr(folds, "save_checkpoint", full)
    err = _one_line_error(capsys, main.main(tiny_run_args(tiny_data, tmp_path, "r", "--kd", "none")),
                          "the disk is full (writing")
    assert f"python main.py --resume r --output_dir {tmp_path / 'models_saved'}" in err


def test_resume_mistakes(tiny_data, tmp_path, capsys):
    out = ["--output_dir", str(tmp_path / "models_saved")]
    _one_line_error(capsys, main.main(["--resume", "nothing", *out]), "there is no run nothing to resume")
    assert main.main(tiny_run_args(tiny_data, tmp_path, "r", "--kd", "none")) == 0
    capsys.readouterr()
    _one_line_error(capsys, main.main(["--resume", "r", "--lr", "0.1", *out]), "--lr cannot be given with it")
    assert main.main(["--resume", "r", "--quiet", *out]) == 0
    assert "fold 1 was finished by an earlier run of r" in capsys.readouterr().out
