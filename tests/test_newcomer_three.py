"""A newcomer's first hour, round three (issue 38): honest explanations, one story per run, a CPU
default that finishes. Each test holds one row of the newcomer's table."""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import inference
import main
from kernels.cpu_kernels import use_fast_cpu_kernels
from models.student import build_student
from tests.conftest import expect_error, make_class_folders, tiny_run_args
from utils.deploy.explain import NoSpatialMap, grad_cam
from utils.deploy.inference import Int8Speed
from utils.distill.methods import METHOD_SETTINGS
from utils.engine.loops import EpochRecord
from utils.pipeline.demo import resolve_run_config
from utils.pipeline.estimate import FoldWork, RunClock
from utils.pipeline.folds import FoldInputs
from utils.runtime.config import CPU_PRESET, DEFAULT_CONFIG, add_config_flags, read_yaml

ROOT = Path(__file__).resolve().parent.parent


def test_row_1_no_map_is_drawn_from_maps_too_small_to_show_anything():
    paddle.seed(0)
    student = build_student("mobilenet_v3_small", 3, width=0.5)
    with pytest.raises(NoSpatialMap, match="no spatial map at this input size: the last stage's maps are 1x1 at 32"):
        grad_cam(student, np.zeros((3, 32, 32), np.float32))


def test_row_1_inference_says_it_cannot_explain_at_32_px_and_writes_nothing(finished_run, tmp_path, capsys):
    data, run_dir = finished_run  # trained at 32 px
    assert inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir), "--explain",
                           str(tmp_path / "cams")]) == 0
    assert "note: --explain writes nothing: no spatial map at this input size" in capsys.readouterr().err
    assert not (tmp_path / "cams").exists()


def _squares(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """112 px images, black but for one 32 px square, red (class 0) or green (class 1), anywhere."""
    images = np.zeros((count, 3, 112, 112), np.float32)
    labels, corners = rng.integers(0, 2, count), rng.integers(0, 112 - 32, (count, 2))
    for image, label, (top, left) in zip(images, labels, corners):
        image[label, top:top + 32, left:left + 32] = 2.0
    return images, labels, corners


def test_row_1_at_112_px_the_map_peaks_on_the_object_that_decided_the_class():
    rng = np.random.default_rng(0)
    paddle.seed(0)
    student = build_student("mobilenet_v3_small", 2, width=0.5)
    use_fast_cpu_kernels(student)
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=student.parameters())
    student.train()
    for _ in range(60):
        images, labels, _ = _squares(rng, 16)
        F.cross_entropy(student(paddle.to_tensor(images)), paddle.to_tensor(labels)).backward()
        optimizer.step()
        optimizer.clear_grad()
    images, labels, corners = _squares(rng, 8)
    for image, label, (top, left) in zip(images, labels, corners):
        cam, explained = grad_cam(student, image)
        assert explained == label
        row, column = np.unravel_index(cam.argmax(), cam.shape)
        # The last maps are 4x4 at 112 px (28 px cells): the peak is on the square or the cell beside it.
        assert top - 8 <= row < top + 40 and left - 8 <= column < left + 40
        assert cam[top:top + 32, left:left + 32].mean() > cam.mean() + 0.1


def test_row_2_the_same_run_started_twice_is_refused_at_once(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=10)
    args = tiny_run_args(data, tmp_path, "twice", "--kd", "none", "--epochs", "200", "--quiet")
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = tmp_path / "models_saved" / "twice" / "fold0" / "training_student.pdparams"
        deadline = time.time() + 300
        while not started.exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.5)
        begin = time.perf_counter()
        expect_error(capsys, main.main(args), f"run twice is in use by process {first.pid}")
        assert time.perf_counter() - begin < 30
        assert first.poll() is None, "the first run goes on"
    finally:
        first.kill()
        first.wait()


def test_row_5_every_predictions_csv_names_its_columns_alike(finished_run, tmp_path):
    data, run_dir = finished_run
    output = tmp_path / "predictions.csv"
    assert inference.main(["--image_path", str(data), "--model_path", str(run_dir), "--output", str(output)]) == 0
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "true_label", "predicted", "confidence", "topk"]
    assert all(row["true_label"] == Path(row["path"]).parent.name for row in rows)
    with open(run_dir / "oof_predictions.csv", newline="") as handle:
        assert csv.DictReader(handle).fieldnames[:3] == ["path", "true_label", "predicted"]
    unlabelled = tmp_path / "loose"
    unlabelled.mkdir()
    for path in list((data / "red").glob("*.png"))[:2]:
        (unlabelled / path.name).write_bytes(path.read_bytes())
    assert inference.main(["--image_path", str(unlabelled), "--model_path", str(run_dir), "--output",
                           str(output)]) == 0
    with open(output, newline="") as handle:
        assert csv.DictReader(handle).fieldnames == ["path", "predicted", "confidence", "topk"]


def test_row_7_every_visualdl_command_the_project_gives_names_its_language():
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    missing = [name for name in tracked for line in (ROOT / name).read_text(encoding="utf-8").splitlines()
               if "visualdl --logdir" in line and "--language en" not in line]
    assert not missing, missing


def test_row_13_flip_tta_is_reported_only_where_training_flipped(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    for name, flip in (("flipped", "0.5"), ("unflipped", "0")):
        assert main.main(tiny_run_args(data, tmp_path, name, "--kd", "none", "--hflip", flip)) == 0
    reports = {name: (tmp_path / "models_saved" / name / "report.md").read_text() for name in ("flipped", "unflipped")}
    assert "with flip TTA" in reports["flipped"] and "flip test-time augmentation" in reports["flipped"]
    assert "with flip TTA" not in reports["unflipped"] and "flip test-time" not in reports["unflipped"]


def test_row_14_the_ema_note_is_said_once_per_run_and_unsure_names_the_best_guess(finished_run, tmp_path, capfd):
    data = make_class_folders(tmp_path / "data", per_class=8)
    assert main.main(tiny_run_args(data, tmp_path, "ema", "--kd", "none", "--ema_decay", "0.9",
                                   "--parallel_folds", "2")) == 0
    assert capfd.readouterr().out.count("note: EMA is the accuracy") == 1
    data, run_dir = finished_run
    assert inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir),
                           "--min_confidence", "0.99"]) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith(str(data))]
    assert lines and all(re.search(r"  unsure \((red|green|blue) 0\.\d\d\)$", line) for line in lines), lines


def test_rows_3_and_6_a_split_dataset_says_what_it_read_and_one_test_accuracy_story(tmp_path, capsys):
    data = tmp_path / "flowers"
    make_class_folders(data / "train", per_class=6)
    make_class_folders(data / "val", per_class=2, seed=1)
    make_class_folders(data / "test", per_class=2, seed=3)
    make_class_folders(data / "train_augmented", per_class=3, seed=4)
    assert main.main(tiny_run_args(data, tmp_path, "flowers", "--kd", "none", "--final_model", "true")) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if " images in 3 classes from " in line)
    assert "train/ and val/ pooled for cross-validation; test/ held out (6 images, scored at the end); " \
           "not read: train_augmented/" in first
    summary = json.loads((tmp_path / "models_saved" / "flowers" / "summary.json").read_text())
    said = (f"held-out test set (6 images): the final student (the model inference.py uses) acc "
            f"{summary['final_test_acc']:.4f}, the fold ensemble acc {summary['test_acc']:.4f}")
    assert said in out
    report = (tmp_path / "models_saved" / "flowers" / "report.md").read_text()
    assert "It has no held-out images of its own" not in report
    assert f"On the 6 held-out test/ images it scores accuracy {summary['final_test_acc']:.4f}" in report
    assert report.count("the fold ensemble") == 1  # one account of the test set, not two


POINTER = re.compile(r'(README|docs/[\w-]+\.md)[,:] \\?"([^"\\]+)\\?"')


def test_row_8_every_pointer_to_a_section_resolves():
    """Comments, messages and docs that send the reader to `README, "Section"` or `docs/x.md,
    "Section"`: that file has a heading that says so (a section that moved leaves no dead pointer)."""
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yaml"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    found = [(name, target, section) for name in tracked if not name.startswith("tests/")
             for target, section in POINTER.findall((ROOT / name).read_text(encoding="utf-8"))]
    assert len(found) >= 5
    dead = [(name, target, section) for name, target, section in found
            if not any(line.startswith("#") and section.lower() in line.lower()
                       for line in (ROOT / ("README.md" if target == "README" else target)).read_text().splitlines())]
    assert not dead, dead


def _run_config(*flags: str):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, METHOD_SETTINGS)
    return resolve_run_config(parser.parse_args(["--data_dir", "photos", *flags]))


def test_row_8_on_a_cpu_a_first_run_takes_the_cpu_preset_and_says_how_to_ask_for_the_full_one(capsys):
    preset, default = read_yaml(CPU_PRESET), read_yaml(DEFAULT_CONFIG)
    cfg = _run_config("--teacher_weights", "none", "--student_weights", "none")  # this machine has no GPU
    assert "No GPU: training with the CPU preset configs/cpu.yaml" in capsys.readouterr().out
    assert all(cfg.to_dict()[key] == value for key, value in preset.items())
    assert _run_config("--epochs", "3").optim.epochs == 3  # the flags still win
    capsys.readouterr()
    full = _run_config("--preset", "full")
    assert "CPU preset" not in capsys.readouterr().out
    assert (full.data.num_folds, full.data.img_size) == (default["num_folds"], default["img_size"])
    assert _run_config("--preset", "cpu", "--device", "cpu").data.num_folds == preset["num_folds"]


def test_row_4_the_int8_verdict_matches_its_figures_and_gives_the_agreement():
    # Faster in batches (1.20x), slower one image at a time: the newcomer's case.
    mixed = Int8Speed(float_ms=0.50, int8_ms=0.62, float_rate=1975, int8_rate=2370, agreement=0.987).note()
    assert "(1.20x)" in mixed and "(0.81x)" in mixed and "98.7% of the images checked" in mixed
    assert "INT8 is faster here in batches only" in mixed and "slower than float" not in mixed
    both = Int8Speed(float_ms=0.9, int8_ms=0.5, float_rate=1000, int8_rate=2000, agreement=1.0).note()
    assert "faster here both ways" in both


def test_row_9_the_countdown_follows_the_work_left_when_the_run_is_slower_than_estimated(tmp_path):
    clock = RunClock([FoldWork({"teacher": 0.0}, {"student": 1000.0})], {"student": 6000.0}, {"student": 100.0},
                     started=time.time() - 3600)  # the estimate ran out an hour ago
    assert clock.remaining_seconds() == 0
    inputs = FoldInputs(None, [], [], np.zeros(0), [], tmp_path, clock)
    note = inputs.progress("student", 1000, epochs=15, then=9)
    record = EpochRecord(epoch=6, train_loss=1.0, train_parts={}, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=1e-3,
                         seconds=10.0)
    # 9 epochs of this student and 9 of the CE-only one at 10 s (180 s), then the final student (60 s)
    assert note(record) == "run: about 4 min left"
    clock.start_final(1.0)
    final_note = inputs.progress("student", 6000, epochs=15)
    last = EpochRecord(epoch=14, train_loss=1.0, train_parts={}, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=1e-3,
                       seconds=70.0)
    assert final_note(last).startswith("run: about 2 min")


def test_row_10_the_report_says_how_far_to_trust_the_label_issues_at_its_accuracy():
    from utils.reporting.report import _how_far_to_trust

    folds = [{"n_val": 360}, {"n_val": 360}]
    low = " ".join(_how_far_to_trust({"oof_acc": 0.56, "folds": folds}, 192))
    assert "get 44% of the images wrong" in low and "192 candidates (27% of the images)" in low
    assert _how_far_to_trust({"oof_acc": 0.95, "folds": folds}, 20) == []


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_row_11_ctrl_c_as_the_fold_workers_start_prints_the_resume_line_and_nothing_else(tmp_path, delay):
    data = make_class_folders(tmp_path / "data", per_class=10)
    args = tiny_run_args(data, tmp_path, "s", "--kd", "kl", "--parallel_folds", "2", "--epochs", "20")
    run = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=tmp_path, start_new_session=True)
    printed = ""
    while "estimated time:" not in printed:  # the last line before the fold workers start
        line = run.stdout.readline()
        assert line, printed
        printed += line
    time.sleep(delay)
    os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C in a terminal: to every process of the run
    rest, _ = run.communicate(timeout=120)
    assert run.returncode == 130
    assert rest.splitlines() == ["interrupted; finished folds and epochs are saved. Continue with:",
                                 f"  python main.py --resume s --output_dir {tmp_path / 'models_saved'}"]
