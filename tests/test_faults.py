"""Faults of the machine and mistakes in resuming: each is one line that says what to do."""
import errno
import shutil

import main
import utils.pipeline.folds as folds
from tests.conftest import tiny_run_args


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
    _one_line_error(capsys, main.main(tiny_run_args(tiny_data, tmp_path, "r")), "only 1 MB free")
    assert not (tmp_path / "models_saved" / "r" / "fold0").exists()


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
