"""A tiny real run (2 folds, 1 epoch, 32 px) and every output it must leave behind."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import main
from tests.conftest import tiny_run_args, write_image
from utils.runtime.config import read_yaml


def test_run_writes_fold_checkpoints_with_metadata(tiny_run):
    _, run_dir, _, _ = tiny_run
    for fold in (0, 1):
        fold_dir = run_dir / f"fold{fold}"
        assert (fold_dir / "best.pdparams").stat().st_size > 100_000
        meta = json.loads((fold_dir / "best.json").read_text())
        assert meta["classes"] == ["blue", "green", "red"]
        assert meta["student"] == "mobilenet_v3_small"
        assert meta["attention"] == "none"
        assert meta["img_size"] == 32
        assert len(meta["mean"]) == len(meta["std"]) == 3
        assert meta["best_epoch"] == 1
        assert 0.0 <= meta["val_acc"] <= 1.0 and 0.0 <= meta["teacher_val_acc"] <= 1.0
        assert "precision" in (fold_dir / "classification_report.txt").read_text()
        assert cv2.imread(str(fold_dir / "confusion_matrix.png")) is not None


def test_run_writes_config_folds_summary_and_oof(tiny_run):
    out, run_dir, data, _ = tiny_run
    config = read_yaml(run_dir / "config.yaml")  # its sections' keys
    assert config["num_folds"] == 2 and config["img_size"] == 32 and config["run_name"] == "tiny"

    folds = json.loads((run_dir / "folds.json").read_text())
    assert len(folds) == 30 and set(folds.values()) == {0, 1}

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == ["blue", "green", "red"]
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    for fold in summary["folds"]:
        assert set(fold) >= {"fold", "n_train", "n_val", "teacher_val_acc", "student_val_acc",
                             "student_val_macro_f1", "best_epoch"}
        assert fold["n_train"] + fold["n_val"] == 30
    accs = [f["student_val_acc"] for f in summary["folds"]]
    assert summary["student_val_acc_mean"] == pytest.approx(np.mean(accs))
    assert summary["student_val_acc_std"] == pytest.approx(np.std(accs))
    assert summary["teacher_val_acc_mean"] == pytest.approx(np.mean([f["teacher_val_acc"] for f in summary["folds"]]))
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped_files"]}
    assert set(skipped) == {"corrupt.jpg", "notes.txt"}
    listed = [line.split("\t") for line in (run_dir / "skipped.txt").read_text().splitlines()]
    assert {Path(path).name: reason for path, reason in listed} == skipped  # also with --quiet, before training

    with open(run_dir / "oof_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "true_label", "predicted", "fold", "confidence"]
    assert sorted(r["path"] for r in rows) == sorted(folds)  # every image exactly once
    assert all(folds[r["path"]] == int(r["fold"]) for r in rows)
    assert all(r["true_label"] in summary["classes"] and r["predicted"] in summary["classes"] for r in rows)
    assert "macro avg" in (run_dir / "classification_report.txt").read_text()
    assert cv2.imread(str(run_dir / "confusion_matrix.png")) is not None
    assert (out / "models_saved" / "latest").read_text().strip() == "tiny"


def test_run_logs_every_fold_to_visualdl(tiny_run):
    out, _, _, _ = tiny_run
    for fold in (0, 1):
        logs = list((out / "logs" / "tiny" / f"fold{fold}").glob("vdlrecords.*.log"))
        assert len(logs) == 1 and logs[0].stat().st_size > 0
        content = logs[0].read_bytes()
        for tag in (b"train/loss", b"train/acc", b"val/loss", b"val/acc", b"train/lr_x1000", b"train/teacher_loss",
                    b"train/augmented_batch", b"val/confusion_matrix", b"val/pr_curve/red"):
            assert tag in content
    run_logs = list((out / "logs" / "tiny" / "run").glob("vdlrecords.*.log"))
    assert len(run_logs) == 1
    content = run_logs[0].read_bytes()
    assert b"val/cv_accuracy" in content and b"oof/confusion_matrix" in content


def test_teacher_trains_only_on_its_folds_training_split(tiny_run):
    _, run_dir, _, teacher_calls = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(teacher_calls) == 2
    for (train_ids, val_ids), fold in zip(teacher_calls, summary["folds"]):
        assert not train_ids & val_ids
        assert len(train_ids) == fold["n_train"] and len(val_ids) == fold["n_val"]


def test_second_run_reuses_cached_teachers_and_repeats_results(tiny_run, capsys):
    out, run_dir, data, _ = tiny_run
    first = json.loads((run_dir / "summary.json").read_text())
    assert main.main(tiny_run_args(data, out, "again")) == 0
    printed = capsys.readouterr().out
    assert printed.count("teacher (cached") == 2 and "teacher epoch" not in printed
    second = json.loads((out / "models_saved" / "again" / "summary.json").read_text())
    # The cached teacher's training curves come with it, into history.json (and VisualDL).
    history = json.loads((out / "models_saved" / "again" / "fold0" / "history.json").read_text())
    assert [record["epoch"] for record in history["teacher"]] == [1]
    for a, b in zip(first["folds"], second["folds"]):
        assert a["teacher_val_acc"] == b["teacher_val_acc"]
        assert a["student_val_acc"] == b["student_val_acc"]


def test_parallel_folds_give_the_sequential_results(tiny_run, capsys):
    """In parallel, teachers train as tasks of their own, ahead of the students. A fold process
    cannot start DataLoader workers (it crashed): it reads its images itself, with a note."""
    out, run_dir, data, _ = tiny_run
    assert main.main(tiny_run_args(data, out, "parallel", "--parallel_folds", "2", "--retrain_teacher",
                                   "--num_workers", "1")) == 0
    assert "note: --num_workers 1 applies to one fold at a time" in capsys.readouterr().out
    sequential = json.loads((run_dir / "summary.json").read_text())
    parallel = json.loads((out / "models_saved" / "parallel" / "summary.json").read_text())
    for key in ("teacher_val_acc", "student_val_acc"):
        assert [f[key] for f in parallel["folds"]] == [f[key] for f in sequential["folds"]]
    assert (out / "models_saved" / "parallel" / "fold1" / "best.pdparams").is_file()


def test_held_out_test_split_is_scored_by_the_fold_ensemble(tmp_path):
    from tests.conftest import make_class_folders

    make_class_folders(tmp_path / "split" / "train", per_class=4, seed=1)
    make_class_folders(tmp_path / "split" / "val", per_class=2, seed=2)
    make_class_folders(tmp_path / "split" / "test", per_class=2, seed=3)
    assert main.main(tiny_run_args(tmp_path / "split", tmp_path, "split", "--kd", "none")) == 0
    summary = json.loads((tmp_path / "models_saved" / "split" / "summary.json").read_text())
    assert summary["n_test"] == 6 and 0.0 <= summary["test_acc"] <= 1.0
    run = tmp_path / "models_saved" / "split"
    probs = np.load(run / "test_probs.npy")
    with open(run / "test_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert probs.shape == (6, 3) and len(rows) == 6 and all("/test/" in r["path"] for r in rows)
    assert [summary["classes"][i] for i in probs.argmax(axis=1)] == [r["predicted"] for r in rows]
    assert np.mean([r["predicted"] == r["true_label"] for r in rows]) == pytest.approx(summary["test_acc"])
    assert sum(f["n_train"] + f["n_val"] for f in summary["folds"]) == 2 * 18
    assert summary["teacher_val_acc_mean"] is None  # --kd none trains no teacher


def test_class_with_fewer_images_than_folds_stops_before_training(tmp_path, capsys):
    from tests.conftest import make_class_folders

    data = make_class_folders(tmp_path / "few", per_class=3)
    for extra in list((data / "green").glob("*.png"))[1:]:
        extra.unlink()
    code = main.main(tiny_run_args(data, tmp_path, "few", "--num_folds", "3"))
    err = capsys.readouterr().err
    assert code == 2
    assert "class 'green' (1) has fewer readable images than num_folds=3" in err and "Traceback" not in err
    assert not (tmp_path / "models_saved" / "few" / "fold0").exists()


def test_many_classes_short_of_images_are_counted_in_one_line():
    from utils.data.folders import check_class_counts
    from utils.runtime.errors import DataError

    classes = [f"c{k:03d}" for k in range(200)]
    with pytest.raises(DataError) as refused:
        check_class_counts(classes, np.repeat(np.arange(200), 2), num_folds=5, batch_size=32)
    message = str(refused.value)
    assert message.startswith("200 classes 'c000' (2), 'c001' (2)") and "and 195 more" in message
    assert "the smallest class has 2" in message and "\n" not in message


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "1.5"], "alpha must be between 0 and 1"),
    (["--temperature", "0"], "temperature must be in (0, 100]"),
    (["--num_folds", "1"], "num_folds must be between 2 and 100"),
    (["--img_size", "16"], "img_size must be a whole number from 32 to 1024, not 16"),
    (["--epochs", "two"], "epochs must be a whole number"),
    (["--student", "resnet9"], "unknown student 'resnet9'"),
    (["--attention", "magic"], "unknown attention 'magic'"),
    (["--kd", "mse"], "unknown kd 'mse'"),
    (["--device", "gpu"], "this Paddle has no CUDA GPU"),
    (["--teacher_epochs", "0"], "teacher_epochs is 0, but the teacher weights carry no head"),
    (["--teacher_weights", "missing.pdparams"], "no weights file missing.pdparams"),
])
def test_bad_options_give_one_line_errors(tiny_data, tmp_path, capsys, flags, message):
    code = main.main(tiny_run_args(tiny_data, tmp_path, "bad", *flags))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_dir_and_bad_config_file(tmp_path, capsys):
    assert main.main(["--data_dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 0.1\n")
    assert main.main(["--config", str(config)]) == 2
    assert "unknown setting(s) learning_rate" in capsys.readouterr().err


def test_reads_grey_rgba_and_non_ascii_paths(tmp_path):
    from utils.data.images import read_image

    grey = tmp_path / "灰度" / "grey.png"
    grey.parent.mkdir()
    cv2.imencode(".png", np.full((10, 12), 128, np.uint8))[1].tofile(str(grey))
    rgba = tmp_path / "rgba.png"
    cv2.imencode(".png", np.full((10, 12, 4), 200, np.uint8))[1].tofile(str(rgba))
    big = tmp_path / "big.jpg"
    write_image(big, np.zeros((400, 300, 3), np.uint8))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert read_image(str(grey)).shape == (10, 12, 3)
    assert read_image(str(rgba)).shape == (10, 12, 3)
    assert read_image(str(big), max_short_side=30).shape == (40, 30, 3)
    assert read_image(str(empty)) is None


def test_run_writes_out_of_fold_probabilities_label_issues_and_calibration(tiny_run):
    out, run_dir, _, _ = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "oof_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    probs = np.load(run_dir / "oof_probs.npy")
    assert probs.shape == (30, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [summary["classes"][i] for i in probs.argmax(axis=1)] == [r["predicted"] for r in rows]

    calibration = summary["calibration"]
    assert len(calibration["fold_temperatures"]) == 2 and calibration["temperature"] > 0
    assert 0 <= calibration["ece_before"] <= 1 and 0 <= calibration["ece_after"] <= 1
    assert [row["min_confidence"] for row in calibration["coverage"]][0] == 0.0
    assert calibration["coverage"][0]["coverage"] == 1.0
    final_spec = json.loads((run_dir / "final" / "best.json").read_text())
    assert final_spec["temperature"] == pytest.approx(calibration["applied_temperature"])
    assert calibration["applied_temperature"] in (calibration["temperature"], 1.0)
    assert cv2.imread(str(run_dir / "reliability.png")) is not None

    with open(run_dir / "label_issues.csv", newline="") as handle:
        issues = list(csv.DictReader(handle))
    assert summary["label_issues"]["count"] == len(issues)
    paths = {r["path"] for r in rows}
    assert all(i["path"] in paths and i["given"] in summary["classes"] and i["suggested"] in summary["classes"]
               for i in issues)
    report = (run_dir / "report.md").read_text()
    assert "## Can the confidence be trusted?" in report and "![reliability diagram](reliability.png)" in report
    assert "--min_confidence" in report
    assert ("## Labels worth a second look" in report) == bool(issues)
    # A run from before oof_probs.npy existed: --report assembles it from the folds' own probabilities.
    (run_dir / "oof_probs.npy").unlink()
    (run_dir / "label_issues.csv").unlink()
    assert main.main(["--report", str(run_dir)]) == 0
    np.testing.assert_allclose(np.load(run_dir / "oof_probs.npy"), probs, atol=1e-6)
    with open(run_dir / "label_issues.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == issues


def test_run_writes_a_report_that_report_rebuilds(tiny_run, capsys):
    out, run_dir, _, _ = tiny_run
    report = (run_dir / "report.md").read_text()
    for section in ("## Dataset", "blue 10, green 10, red 10", "Skipped files: 2.", "## Cross-validation",
                    "| mean ± std |", "## Out-of-fold classification report", "macro avg",
                    "![confusion matrix](confusion_matrix.png)", "![training curves](training_curves.png)",
                    "## Most confidently misclassified", "## Configuration", "run_name: tiny"):
        assert section in report
    # one epoch: every fold's best epoch was its last
    assert "Fold(s) 0, 1: the best epoch was the last (1): more epochs may help" in report
    for png in ("training_curves.png", "misclassified.png", "confusion_matrix.png"):
        assert cv2.imread(str(run_dir / png)) is not None
    history = json.loads((run_dir / "fold0" / "history.json").read_text())
    assert [e["epoch"] for e in history["student"]] == [1] and len(history["teacher"]) == 1
    (run_dir / "report.md").unlink()
    assert main.main(["--report", str(run_dir)]) == 0
    assert (run_dir / "report.md").read_text() == report
    assert main.main(["--report", str(out / "nowhere")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_quiet_run_with_a_ce_only_baseline(tiny_data, tmp_path, capsys):
    assert main.main(tiny_run_args(tiny_data, tmp_path, "quiet", "--quiet", "--baseline")) == 0
    summary = json.loads((tmp_path / "models_saved" / "quiet" / "summary.json").read_text())
    assert all(0.0 <= f["baseline_val_acc"] <= 1.0 for f in summary["folds"])
    assert summary["baseline_val_acc_mean"] == pytest.approx(np.mean([f["baseline_val_acc"] for f in summary["folds"]]))
    history = json.loads((tmp_path / "models_saved" / "quiet" / "fold0" / "history.json").read_text())
    assert len(history["baseline"]) == 1
    printed = capsys.readouterr().out
    assert "student epoch" not in printed and "train loss" not in printed
    assert "mean" in printed  # the summary table still prints


def test_running_again_with_the_same_name_reuses_finished_folds(tiny_data, tmp_path, capsys):
    args = tiny_run_args(tiny_data, tmp_path, "resumed", "--kd", "none")
    assert main.main(args) == 0
    run_dir = tmp_path / "models_saved" / "resumed"
    first = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "fold1" / "result.json").unlink()  # as if the run had been killed during fold 1
    capsys.readouterr()
    assert main.main(args) == 0
    printed = capsys.readouterr().out
    assert "fold 0 was finished by an earlier run of resumed: reusing it" in printed
    assert "fold 1 student epoch" in printed and "fold 0 student epoch" not in printed
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["folds"] == first["folds"]  # fold 1 retrained from its seed: the same result


def test_a_run_name_is_not_reused_with_other_settings(tiny_data, tmp_path, capsys):
    assert main.main(tiny_run_args(tiny_data, tmp_path, "taken", "--kd", "none")) == 0
    assert main.main(tiny_run_args(tiny_data, tmp_path, "taken", "--kd", "none", "--lr", "0.01")) == 2
    assert "run taken already exists with other settings (lr)" in capsys.readouterr().err


def test_sigterm_stops_a_real_run_quietly_which_then_continues(tiny_data, tmp_path):
    """Two folds side by side in worker processes, stopped mid-training: one line saying how to
    go on, and no report from Paddle's C++ signal handler or Python's resource tracker."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    args = tiny_run_args(tiny_data, tmp_path, "killed", "--kd", "none", "--epochs", "6", "--parallel_folds", "2")
    process = subprocess.Popen([sys.executable, str(root / "main.py"), *args], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mid_training = tmp_path / "models_saved" / "killed" / "fold0" / "training_student.pdparams"
    deadline = time.time() + 120
    while not mid_training.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before it could be stopped")
    assert process.returncode == 130
    assert f"python main.py --resume killed --output_dir {tmp_path / 'models_saved'}" in err
    for noise in ("Traceback", "Termination signal", "resource_tracker", "Warning"):
        assert noise not in err and noise not in out, noise
    # Continued in one process (a runtime setting): no second pair of fold processes to start.
    resumed = subprocess.run([sys.executable, str(root / "main.py"), *args, "--parallel_folds", "1"], cwd=root,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "models_saved" / "killed" / "summary.json").is_file()
    # cleanlab's own worker pool, ended with the SIGTERM that the run turns into Ctrl-C, printed tracebacks.
    assert "Traceback" not in resumed.stderr, resumed.stderr


def test_images_in_a_memory_mapped_store_give_the_in_memory_results(tiny_data, tmp_path, capsys):
    """--image_memory_mb 0 decodes into a file that the fold processes map, with the same results."""
    assert main.main(tiny_run_args(tiny_data, tmp_path, "memory", "--kd", "none")) == 0
    assert main.main(tiny_run_args(tiny_data, tmp_path, "mapped", "--kd", "none", "--image_memory_mb", "0",
                                   "--parallel_folds", "2")) == 0
    assert "they go to a memory-mapped file" in capsys.readouterr().out
    runs = tmp_path / "models_saved"
    accuracies = [[f["student_val_acc"] for f in json.loads((runs / name / "summary.json").read_text())["folds"]]
                  for name in ("memory", "mapped")]
    assert accuracies[0] == accuracies[1]
    assert not (runs / "mapped" / "decoded_images.bin").exists()  # removed once the run is finished


def test_image_store_serves_images_of_any_size_and_pickles_small(tmp_path):
    import pickle

    import numpy as np

    from utils.data.images import ImageStore

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(5, 7, 3), (9, 4, 3), (1, 1, 3)]]
    (tmp_path / "store.bin").write_bytes(b"".join(image.tobytes() for image in images))
    store = pickle.loads(pickle.dumps(ImageStore(tmp_path / "store.bin", [image.shape for image in images])))
    assert len(store) == 3 and len(pickle.dumps(store)) < 500
    for stored, image in zip(store, images):
        np.testing.assert_array_equal(stored, image)
