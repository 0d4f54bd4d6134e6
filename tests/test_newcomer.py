"""What a newcomer meets first: the time a run will take, the quick preset it points to,
and inference outputs that never overwrite each other."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import inference
import main
from tests.conftest import make_class_folders, tiny_run_args
from utils.pipeline.estimate import (
    FoldWork,
    RunClock,
    describe,
    plan_final,
    plan_fold,
    pool_seconds,
    quick_preset_note,
)
from utils.runtime.config import DEFAULT_CONFIG, add_config_flags, build_config, read_yaml

ROOT = Path(__file__).resolve().parent.parent
QUICK_PRESET = "configs/cpu.yaml"  # utils.runtime.config.CPU_PRESET, as the note names it


def test_the_clock_runs_the_folds_as_the_pool_does_then_the_final_student_alone():
    fold = FoldWork({"teacher": 3000.0}, {"student": 1200.0, "eval": 0.0})  # 300 s, then 120 s
    clock = RunClock([fold] * 3, {"student": 1000.0}, {"teacher": 10.0, "student": 10.0, "eval": 1.0}, workers=2)
    # Teachers 0 and 1 side by side (0-300 s); then teacher 2 beside students 0 and 1 (300-540 s);
    # student 2 waits for its teacher (600-720 s); then the final student, in one process (100 s).
    assert clock.total_seconds() == 720 + 100
    assert RunClock([fold] * 3, {}, clock.rates, workers=1).total_seconds() == 3 * 420
    assert RunClock([fold] * 3, {}, clock.rates, workers=2, share=2).total_seconds() == 720 / 2
    no_teacher = FoldWork({}, {"student": 1000.0})
    assert RunClock([no_teacher] * 3, {}, clock.rates, workers=2).total_seconds() == 200
    assert pool_seconds([(300.0, 120.0), (0.0, 50.0)], 2) == 420  # the second fold's student starts at once
    clock.started = time.time() - 15
    assert 804 <= clock.remaining_seconds() <= 805
    clock.observe("student", 100, 20.0)  # 5 img/s seen: the speed halves towards it
    assert clock.rates["student"] == 7.5
    clock.rates["loading"] = 10.0
    clock.observe("student", 100, 20.0)  # 10 of the 20 s were augmentation: the model went at 10 img/s
    assert clock.rates["student"] == 8.75
    clock.started = time.time() - 2000  # the folds took longer than planned, or shorter: either way they are done
    clock.start_final(0.5)  # the final student trains half the planned epochs, its work alone is left
    assert clock.remaining_seconds() == pytest.approx(500 / clock.rates["student"], abs=0.5)
    assert [describe(s) for s in (20, 61, 600, 7500)] == ["under a minute", "about 2 min", "about 10 min",
                                                          "about 2 h 05 min"]


def test_a_run_over_an_hour_on_a_cpu_names_the_quick_preset_which_loads():
    long_run = RunClock([], {"teacher": 3.6e6}, {"teacher": 500.0})
    cfg = build_config(read_yaml(DEFAULT_CONFIG))
    assert quick_preset_note(RunClock([], {"teacher": 100.0}, {"teacher": 1.0}), "cpu", cfg) is None
    assert quick_preset_note(long_run, "gpu", cfg) is None
    assert QUICK_PRESET in quick_preset_note(long_run, "cpu", cfg)
    preset = build_config({**read_yaml(DEFAULT_CONFIG), **read_yaml(ROOT / QUICK_PRESET)})
    assert quick_preset_note(long_run, "cpu", preset) is None  # already on it: the machine is slow or busy
    assert (preset.data.num_folds, preset.data.img_size, preset.student.student, preset.teacher.teacher) == \
        (3, 64, "mobilenet_v3_small", "resnet18")


def test_planned_work_counts_every_epoch_evaluation_view_and_augmentation():
    cfg = build_config({**read_yaml(DEFAULT_CONFIG), "epochs": 10, "teacher_epochs": 3, "baseline": True,
                        "teacher_cache": "views", "teacher_views": 4, "ema_decay": 0.99})
    fold = plan_fold(cfg, 80, 20, train_teacher=True, label_views=True, needs_teacher=True)
    assert fold.teacher == {"teacher": 3 * 80, "labelling": 3 * 20 * 2 + 4 * 80, "loading": 3 * 80 + 4 * 80}
    # distilled and CE-only students, each evaluated with and without its weight average
    assert fold.student == {"student": 2 * 10 * 80, "eval": 2 * 10 * 20 * 2, "loading": 2 * 10 * 80, "labelling": 0}
    cached = plan_fold(cfg, 80, 20, train_teacher=False, label_views=False, needs_teacher=True)
    assert sum(cached.teacher.values()) == 0
    assert plan_final(cfg, 100, True) == {"student": 10 * 100, "loading": 10 * 100, "labelling": 0}
    live = build_config({**read_yaml(DEFAULT_CONFIG), "epochs": 10, "teacher_cache": "off", "num_folds": 3})
    assert plan_final(live, 100, True)["labelling"] == 3 * 10 * 100  # every fold's teacher, every batch
    assert plan_fold(live, 80, 20, True, False, True).student["labelling"] == 10 * 80


def test_a_run_prints_its_estimate_before_training(tiny_data, tmp_path, capsys):
    assert main.main(tiny_run_args(tiny_data, tmp_path, "timed", "--kd", "none", "--quiet")) == 0
    printed = capsys.readouterr().out
    assert "estimated time: " in printed and "on this machine (2 fold(s) to train" in printed


def test_shown_copies_of_same_named_images_in_sub_folders_do_not_collide(tiny_run, tmp_path, capsys):
    _, run_dir, _, _ = tiny_run
    photos = make_class_folders(tmp_path / "photos", per_class=1)  # red/red_0.png, green/...
    for folder in ("red", "green"):
        (photos / folder / f"{folder}_0.png").rename(photos / folder / "same.png")
    shown = tmp_path / "shown"
    assert inference.main(["--image_path", str(photos), "--recursive", "--model_path", str(run_dir), "--show",
                           "--show_dir", str(shown)]) == 0
    for folder in ("red", "green"):
        original = cv2.imread(str(photos / folder / "same.png"))
        annotated = cv2.imread(str(shown / folder / "same.png"))
        assert annotated is not None and annotated.shape == original.shape
        assert not np.array_equal(annotated, original)
    assert not np.array_equal(cv2.imread(str(shown / "red" / "same.png")), cv2.imread(str(shown / "green" /
                                                                                           "same.png")))


def test_export_mistakes_give_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    import export

    out, run_dir, _, _ = tiny_run
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    mistakes = [
        (["--model_path", str(out / "nowhere"), "--export_dir", str(tmp_path / "e1")], "does not exist"),
        (["--model_path", str(run_dir), "--export_dir", str(a_file)], "is a file, not a folder"),
        (["--model_path", str(run_dir), "--export_dir", str(tmp_path / "e2"), "--fold", "7"], "no finished fold 7"),
        (["--model_path", str(run_dir), "--export_dir", str(tmp_path / "e3"), "--quantize", "int8",
          "--calibration_dir", str(tmp_path / "none")], "INT8 calibration needs images"),
        (["--model_path", str(run_dir), "--export_dir", str(tmp_path / "e4"), "--calibration_images", "0"],
         "--calibration_images must be at least 1"),
    ]
    for argv, message in mistakes:
        assert export.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e3").exists()  # nothing written before the mistake was found


def test_offline_imagenet_weights_fail_at_once_in_one_line_naming_both_flags(tiny_data, tmp_path, capsys,
                                                                            monkeypatch):
    """Weights are resolved once, in the main process, before the estimate and any fold process."""
    import paddle.vision.models.mobilenetv3 as mobilenetv3
    import paddle.vision.models.resnet as resnet

    calls = []

    def offline(url, md5sum=None):
        calls.append(url)
        raise ConnectionError("Name or service not known")

    for module in (resnet, mobilenetv3):
        monkeypatch.setattr(module, "get_weights_path_from_url", offline)
    args = tiny_run_args(tiny_data, tmp_path, "offline")
    for flag in ("--teacher_weights", "--student_weights"):
        args[args.index(flag) + 1] = "imagenet"
    start = time.perf_counter()
    code = main.main(args)
    captured = capsys.readouterr()
    assert code == 2 and time.perf_counter() - start < 15
    assert "--teacher_weights none --student_weights none" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
    assert len(calls) == 1  # the teacher's, once; nothing started that would try again
    assert not (tmp_path / "models_saved" / "offline").exists()


def test_help_entries_read_as_sentences_and_show_the_scratch_recipe_defaults():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    help_of = {action.dest: action.help for action in parser._actions}
    # the comment above a key and the one beside it no longer run together
    assert "2.5x slower. true | false" in help_of["fast_depthwise"]
    assert "(linear or cosine). constant | linear | cosine" in help_of["temperature_schedule"]
    assert help_of["recipe"].startswith("The values of configs/default.yaml suit fine-tuning")
    # weights `none` train with the scratch recipe's values, and --help says so
    assert help_of["lr"].endswith("(default: 0.001; scratch recipe: 0.002)")
    assert help_of["label_smoothing"].endswith("(default: 0.0; scratch recipe: 0.1)")
    assert help_of["weight_decay"].endswith("(default: 0.05)")
