"""Scale out: data-parallel folds on paddle.distributed (CPU, gloo, 2 processes on
127.0.0.1), and a run's folds trained by separate invocations."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import main
from models.teacher import build_teacher, freeze_teacher
from tests.conftest import make_class_folders, tiny_run_args
from tests.data_parallel_job import launch
from utils.data.folders import scan_dataset
from utils.data.images import load_images
from utils.data.manifest import Manifest
from utils.data.splits import make_folds
from utils.data.transforms import resize_size
from utils.distill import teachers
from utils.distill.teachers import teacher_cache_path
from utils.distill.view_cache import label_views, view_cache_path, view_count
from utils.pipeline.folds import FoldInputs, fold_loaders, teacher_setup
from utils.runtime.config import load_saved_config
from utils.runtime.weights_file import load_weights_file


@pytest.fixture(scope="module")
def runs(background_jobs):
    """The launched run and the single-process one (tests/data_parallel_job.py), started in the
    background when the session began."""
    return background_jobs["runs"].wait()


@pytest.fixture(scope="module")
def late_rank_job(background_jobs):
    return background_jobs["late_rank_job"].wait()


@pytest.fixture(scope="module")
def repeated_launch(background_jobs):
    return background_jobs["repeated_launch"].wait()


def _files(run_dir: Path) -> set[str]:
    return {str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file()}


def test_a_launched_run_writes_the_files_of_a_single_process_run(runs):
    _, launched, single = runs
    assert _files(launched) == _files(single)
    assert "final/best.pdparams" in _files(launched) and "report.md" in _files(launched)


def test_data_parallel_students_learn_as_well_as_one_process_with_twice_the_batch(runs):
    _, launched, single = runs
    dp, one = (json.loads((run / "summary.json").read_text()) for run in (launched, single))
    assert one["student_val_acc_mean"] >= 0.9, "the students learned the colours"
    # The stated tolerance: 0.1 of accuracy on each fold's 68 validation images.
    assert abs(dp["student_val_acc_mean"] - one["student_val_acc_mean"]) <= 0.1
    assert [f["n_val"] for f in dp["folds"]] == [f["n_val"] for f in one["folds"]]
    # Every validation image is scored exactly once: the sampler's padding is trimmed.
    rows = (launched / "oof_predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == len({row.split(",")[0] for row in rows}) == 135


def test_stored_teacher_views_equal_a_single_process_labelling(runs, monkeypatch):
    data, launched, _ = runs
    monkeypatch.setattr(teachers, "world_size", lambda: 2)  # the launched run's teachers are keyed by it
    cfg = load_saved_config(launched / "config.yaml")
    index = scan_dataset(data)
    images, samples, _ = load_images(index.samples, resize_size(cfg.data.img_size))
    labels = np.array([s.label for s in samples])
    digests = Manifest(**json.loads((launched / "dataset.json").read_text())).digests_by_path(data)
    inputs = FoldInputs(index, samples, images, labels, [digests[s.path] for s in samples], launched)
    fold = make_folds(labels, cfg.data.num_folds, cfg.data.seed)[0]
    teacher_path = teacher_cache_path(teacher_setup(cfg), inputs.teacher_key, fold)
    views = view_count(cfg.teacher, cfg.optim.epochs)
    stored = np.load(view_cache_path(teacher_path, views))
    teacher, _ = build_teacher(len(index.classes), "none", cfg.teacher.teacher)
    teacher.set_state_dict(load_weights_file(teacher_path))
    freeze_teacher(teacher)
    dataset = fold_loaders(cfg, fold, images, labels, replay_views=True).student.dataset
    relabelled = label_views(teacher, dataset, views, cfg.data.img_size, "cpu")
    assert stored.shape == relabelled.shape == (2, len(fold.train_indices), 3)
    assert np.array_equal(relabelled, stored)


def test_folds_trained_by_separate_invocations_give_the_summary_of_one_run(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)
    base = tiny_run_args(data, tmp_path, "whole", "--num_folds", "3", "--kd", "none", "--quiet")
    assert main.main(base) == 0
    split = tiny_run_args(data, tmp_path, "split", "--num_folds", "3", "--kd", "none", "--quiet")
    assert main.main([*split, "--folds", "0"]) == 0
    out = capsys.readouterr().out
    assert "fold(s) 1,2 of 3 not finished yet" in out and "--resume split --folds 1,2" in out
    run_dir = tmp_path / "models_saved" / "split"
    assert not (run_dir / "summary.json").exists()
    assert main.main(["--resume", "split", "--folds", "1,2", "--output_dir", str(tmp_path / "models_saved")]) == 0
    whole, parts = (json.loads((tmp_path / "models_saved" / name / "summary.json").read_text())
                    for name in ("whole", "split"))
    keys = ("fold", "n_train", "n_val", "student_val_acc", "student_val_macro_f1", "best_epoch")
    assert [{k: f[k] for k in keys} for f in whole["folds"]] == [{k: f[k] for k in keys} for f in parts["folds"]]


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the processes the launcher started."""
    import psutil

    ranks = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            env = child.environ()
        except psutil.Error:
            continue
        if "PADDLE_TRAINER_ID" in env and "main.py" in " ".join(child.cmdline()):
            ranks[int(env["PADDLE_TRAINER_ID"])] = child.pid
    return ranks


def _training_job(tmp_path: Path, name: str) -> tuple[subprocess.Popen, dict[int, int]]:
    """A launched 2-rank job, once its ranks are training; its launcher and rank -> pid."""
    data = make_class_folders(tmp_path / "data", per_class=10)
    args = tiny_run_args(data, tmp_path / "job", name, "--epochs", "50", "--kd", "none", "--quiet")
    (tmp_path / "logs").mkdir()
    job = launch(args, tmp_path / "logs")
    state = tmp_path / "job" / "models_saved" / name / "fold0" / "training_student.pdparams"
    deadline = time.time() + 300
    while not state.exists():
        assert job.poll() is None and time.time() < deadline, "the job did not start training"
        time.sleep(0.5)
    ranks = _worker_pids(job.pid)
    assert set(ranks) == {0, 1}
    return job, ranks


def test_a_killed_rank_ends_the_job_with_an_error_in_bounded_time(tmp_path):
    job, ranks = _training_job(tmp_path, "killed")
    os.kill(ranks[1], signal.SIGKILL)
    start = time.time()
    job.wait(timeout=120)
    assert job.returncode != 0 and time.time() - start < 120


def test_the_ranks_of_a_killed_launcher_stop_within_seconds(tmp_path):
    """Row 5: SIGKILL of paddle.distributed.launch used to leave both ranks training to the end."""
    import psutil

    job, ranks = _training_job(tmp_path, "orphans")
    job.kill()
    job.wait(timeout=30)
    deadline = time.time() + 20
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
              for pid in ranks.values()):
        assert time.time() < deadline, "a rank outlived its launcher by 20 s"
        time.sleep(0.5)


def test_a_rank_later_than_the_timeout_ends_the_job_in_one_line(late_rank_job):
    """Row 4, with real gloo processes: rank 1 reaches the end-of-folds barrier 20 s late, past
    --dist_timeout_minutes 0.1; rank 0 gives up with the one line that says what to change
    (tests/data_parallel_job.py, launched in the background)."""
    returncode, said = late_rank_job
    assert returncode != 0
    assert "error: process 0 waited more than 0.1 minutes for the other processes" in said
    assert "--dist_timeout_minutes" in said and "Traceback" not in said and "C++" not in said


def test_only_rank_0_reads_or_writes_the_run_record(tmp_path, monkeypatch):
    """Row 3 of round three: rank 1 reached log_run before rank 0 had written the confusion
    matrix it reads. Another rank neither reads the run's outputs nor writes a log."""
    import utils.reporting.visual_logging as visual_logging

    monkeypatch.setattr(visual_logging, "is_main", lambda: False)
    visual_logging.log_run(tmp_path / "logs" / "run", {}, {}, tmp_path / "not_written_yet.png")
    assert not (tmp_path / "logs").exists()


def test_a_collective_timeout_is_said_in_one_line_with_what_to_change(monkeypatch):
    from utils.runtime.distributed import collective_timeout

    gloo = RuntimeError("[/paddle/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:80] TIMEOUT self_rank = "
                        "none pair_rank = -1 peer_str = none")  # as Paddle 3.3 words it
    waited = RuntimeError("timed out at barrier paddle-kd-barrier-3")
    assert collective_timeout(gloo) is None  # not launched: nothing to say
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_PG_TIMEOUT", "5400000")
    message = collective_timeout(waited)
    assert "\n" not in message and "process 1 waited more than 90 minutes" in message
    assert "--dist_timeout_minutes" in message
    # Inside a step, gloo's own 30 s limit: no option changes it, so none is named.
    message = collective_timeout(gloo)
    assert "process 1 waited more than 30 s" in message and "--dist_timeout_minutes" not in message
    assert collective_timeout(ValueError("a shape mismatch")) is None


def test_the_timeout_reaches_paddle_unless_the_user_set_it(monkeypatch):
    import paddle.distributed as dist

    from utils.runtime import distributed

    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    # Set, then removed: monkeypatch restores only what it saw, and init_distributed sets the variable.
    monkeypatch.setenv("PADDLE_PG_TIMEOUT", "0")
    monkeypatch.delenv("PADDLE_PG_TIMEOUT")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_parallel_env", lambda: None)
    monkeypatch.setattr(distributed, "die_with_parent", lambda: None)
    distributed.init_distributed(timeout_minutes=90)
    assert os.environ["PADDLE_PG_TIMEOUT"] == "5400000"
    monkeypatch.setenv("PADDLE_PG_TIMEOUT", "1000")
    distributed.init_distributed(timeout_minutes=90)
    assert os.environ["PADDLE_PG_TIMEOUT"] == "1000"


def test_a_second_data_parallel_run_reuses_the_teachers_the_first_cached(repeated_launch):
    """Row C of round four: only rank 0 touches the teacher cache."""
    code, said = repeated_launch
    assert code == 0, said[-3000:]
    assert said.count("teacher (cached") == 2 and "teacher (trained" not in said, said[-3000:]
