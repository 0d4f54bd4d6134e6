"""Reliability round four: no output replaces an input, the same pixels never under two labels
(nor on both sides of a fold), damaged or edited model files get one line. Each test
reproduces one row of the adversarial user's table (issue 36)."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

import export
import inference
import main
from tests.conftest import expect_error, make_class_folders, tiny_run_args, write_image
from utils.data.images import decoded_or_reason
from utils.distill import teachers
from utils.distill.teachers import teacher_cache_key
from utils.pipeline.folds import teacher_setup
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml
from utils.runtime.files import partial_path


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_row_a_annotated_copies_never_replace_the_photos(finished_run, capsys):
    data, run_dir = finished_run
    before, model_before = _digests(data), _digests(run_dir)
    for options in (["--show", "--show_dir", str(data)], ["--show", "--show_dir", str(data / ".." / data.name)],
                    ["--output", str(run_dir / "final" / "best.json")]):  # the model's own description
        code = inference.main(["--image_path", str(data), "--model_path", str(run_dir), *options])
        expect_error(capsys, code, "would overwrite")
    assert _digests(data) == before and _digests(run_dir) == model_before
    # Beside the photos, in a folder of its own, is fine.
    assert inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir), "--show",
                           "--show_dir", str(data.parent / "shown")]) == 0
    assert _digests(data) == before and len(list((data.parent / "shown").glob("*.png"))) == 6


def test_row_a_a_run_folder_that_holds_the_data_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    data = make_class_folders(out / "models_saved" / "photos", per_class=6)
    args = tiny_run_args(data, out, "photos", "--kd", "none")
    expect_error(capsys, main.main(args), "is inside")
    assert sorted(p.name for p in data.iterdir()) == ["blue", "green", "red"]


def test_row_f_export_into_the_runs_own_folder_is_refused_before_writing(finished_run, capsys):
    _, run_dir = finished_run
    before = _digests(run_dir)
    code = export.main(["--model_path", str(run_dir), "--fold", "0", "--export_dir", str(run_dir)])
    err = expect_error(capsys, code, "--export_dir would overwrite")
    assert "best.json" in err
    assert _digests(run_dir) == before


def test_row_g_a_damaged_onnx_file_is_named_in_one_line(finished_run, tmp_path, capsys):
    _, run_dir = finished_run
    assert export.main(["--model_path", str(run_dir), "--export_dir", str(tmp_path / "exported"),
                        "--format", "onnx"]) == 0
    model_dir = tmp_path / "exported" / "final"
    (model_dir / "model.onnx").write_text("garbage\n")
    code = inference.main(["--image_path", str(run_dir.parent.parent / "data" / "red"), "--model_path",
                           str(model_dir), "--backend", "onnxruntime"])
    expect_error(capsys, code, f"{model_dir / 'model.onnx'} is not an ONNX model")


def test_row_h_class_names_that_do_not_match_the_models_outputs(finished_run, tmp_path, capsys):
    data, run_dir = finished_run
    assert export.main(["--model_path", str(run_dir), "--export_dir", str(tmp_path / "exported")]) == 0
    meta_path = tmp_path / "exported" / "final" / "best.json"
    meta = json.loads(meta_path.read_text())
    for classes in (["a", "b"], ["a", "b", "c", "d", "e"]):
        meta_path.write_text(json.dumps({**meta, "classes": classes}))
        code = inference.main(["--image_path", str(data / "red"), "--model_path", str(meta_path.parent)])
        expect_error(capsys, code, f"names {len(classes)} classes, but the model gives 3 outputs")


def test_row_b_the_same_pixels_under_two_labels_are_left_out_and_copies_count_once(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=8)
    shutil.copyfile(data / "red" / "red_0.png", data / "green" / "copy_of_red_0.png")  # a byte copy
    (data / "blue" / "linked_green_1.png").hardlink_to(data / "green" / "green_1.png")
    shutil.copyfile(data / "red" / "red_2.png", data / "red" / "red_2_copy.png")  # the same class
    assert main.main(tiny_run_args(data, tmp_path, "dup", "--kd", "none")) == 0
    out = capsys.readouterr().out
    assert "warning: 5 image(s) left out as copies of others" in out
    run_dir = tmp_path / "models_saved" / "dup"
    skipped = (run_dir / "skipped.txt").read_text()
    for name in ("red/red_0.png", "copy_of_red_0.png", "green/green_1.png", "linked_green_1.png", "red_2_copy.png"):
        assert name in skipped
    assert "red_2.png\t" not in skipped  # the first copy within a class is kept
    with open(run_dir / "oof_predictions.csv", newline="") as handle:
        trained = [Path(row["path"]).name for row in csv.DictReader(handle)]
    assert len(trained) == 24 + 3 - 5 and "red_2.png" in trained
    assert not {"red_0.png", "copy_of_red_0.png", "green_1.png", "linked_green_1.png", "red_2_copy.png"} & set(trained)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["skipped_files"]) == 5
    assert "under classes green and red" in (run_dir / "report.md").read_text()


HOSTILE_NAMES = ["=cmd|' -C calc'!A0", "<img src=x onerror=alert(1)>", "a|b", "line\nbreak"]


def _table_cells(line: str) -> int:
    """The cells of a Markdown table row: bars that are not escaped."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_row_d_class_names_never_become_formulas_html_or_broken_tables(tmp_path, capsys):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for index, name in enumerate(HOSTILE_NAMES):
        for i in range(6):
            colour = np.array([200 if k == index % 3 else 40 for k in range(3)]) + 30 * (index // 3)
            write_image(data / name / f"-{i}.png", np.clip(colour + rng.integers(-30, 30, (32, 40, 3)), 0, 255
                                                           ).astype(np.uint8))
    assert main.main(tiny_run_args(data, tmp_path, "hostile", "--kd", "none")) == 0
    printed = capsys.readouterr().out
    first = next(line for line in printed.splitlines() if line.startswith("24 images"))
    assert "line\\x0abreak: 6" in first  # one console line, the newline shown
    run_dir = tmp_path / "models_saved" / "hostile"
    assert inference.main(["--image_path", str(data), "--model_path", str(run_dir), "--output",
                           str(tmp_path / "predictions.csv")]) == 0
    tables = [run_dir / "oof_predictions.csv", run_dir / "label_issues.csv", tmp_path / "predictions.csv"]
    for table in tables:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert rows, table
        for row in rows:
            for column, cell in row.items():
                if column in ("confidence", "score", "fold"):
                    float(cell)  # numbers stay numbers
                else:
                    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (table, column, cell)
    report = (run_dir / "report.md").read_text()
    outside_code = re.sub(r"(`{3,})[^\n]*\n.*?\n\1\n", "", report, flags=re.S)  # code blocks show text as is
    assert "<img" not in outside_code and "&lt;img src=x onerror=alert\\(1\\)&gt;" in outside_code
    lines = outside_code.splitlines()
    for start, line in enumerate(lines):
        if line.startswith("|") and (start == 0 or not lines[start - 1].startswith("|")):
            block = list(itertools.takewhile(lambda row: row.startswith("|"), lines[start:]))
            assert len({_table_cells(row) for row in block}) == 1, block


def test_row_e_partial_files_of_killed_processes_are_swept_at_start(finished_run, tmp_path):
    data, run_dir = finished_run
    teachers_dir = run_dir.parent / "teachers"
    teachers_dir.mkdir(exist_ok=True)
    ours = partial_path(run_dir / "fold0" / "training_student.pdparams")  # this machine, this process
    dead = [ours.with_name(ours.name.replace(f"-{os.getpid()}.", "-999999.")),
            teachers_dir / "abc.training.pdparams.999998.tmp"]  # as an earlier version named them
    live = teachers_dir / f"abc.pdparams.{os.getpid()}.tmp"
    elsewhere = teachers_dir / "abc.pdparams.other-machine-999997.tmp"  # a process of another machine
    for path in [*dead, live, elsewhere]:
        path.write_bytes(b"half a file")
    assert main.main(["--resume", run_dir.name, "--output_dir", str(run_dir.parent)]) == 0
    assert not any(path.exists() for path in dead)
    assert live.exists() and elsewhere.exists()


def test_row_i_a_weights_file_that_is_not_weights_stops_the_run_before_anything_is_written(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)
    garbage = tmp_path / "garbage.pdparams"
    garbage.write_text("not weights\n")
    for flag in ("--student_weights", "--teacher_weights"):
        args = tiny_run_args(data, tmp_path, "w", flag, str(garbage))
        expect_error(capsys, main.main(args), f"--{flag[2:]}: {garbage} is not a weights file")
        assert not (tmp_path / "models_saved").exists()


def test_row_j_a_hidden_class_folder_is_listed_as_skipped(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=6)
    make_class_folders(tmp_path / "hidden", per_class=6)
    shutil.copytree(tmp_path / "hidden" / "red", data / ".hidden_class")
    assert main.main(tiny_run_args(data, tmp_path, "hidden", "--kd", "none")) == 0
    skipped = (tmp_path / "models_saved" / "hidden" / "skipped.txt").read_text()
    assert ".hidden_class\ta hidden folder" in skipped


def test_row_k_folds_out_of_range_write_nothing(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=6)
    expect_error(capsys, main.main(tiny_run_args(data, tmp_path, "k", "--folds", "5")), "the run has folds 0 to 1")
    assert not (tmp_path / "models_saved").exists()


def test_row_l_a_key_given_twice_in_yaml_is_refused(tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("epochs: 1\nlr: 0.01\nepochs: 2\n")
    data = make_class_folders(tmp_path / "data", per_class=6)
    expect_error(capsys, main.main([*tiny_run_args(data, tmp_path, "l"), "--config", str(config)]),
                 "the key 'epochs' appears twice (line 3)")


def test_row_m_teachers_of_data_parallel_runs_are_keyed_by_the_world_size(monkeypatch):
    cfg = build_config({**read_yaml(DEFAULT_CONFIG), "data_dir": "x"})
    key = [["a", "b"], [0, 1], np.array([0, 1]), 0]
    single = teacher_cache_key(teacher_setup(cfg), *key)
    monkeypatch.setattr(teachers, "world_size", lambda: 2)
    assert teacher_cache_key(teacher_setup(cfg), *key) != single


def test_row_n_messages_say_what_happened_and_hints_work_when_pasted(finished_run, tmp_path, capsys):
    data, run_dir = finished_run
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for odd in ("/dev/zero", str(fifo)):
        expect_error(capsys, inference.main(["--image_path", odd, "--model_path", str(run_dir)]),
                     "is not a regular file or a folder")
    assert decoded_or_reason(str(fifo)) == "not a regular file (a device, pipe or socket)"  # no hang
    assert decoded_or_reason(str(tmp_path / "gone.jpg")).startswith("disappeared while reading")
    # A damaged run's hint names its folder, so that it works from anywhere.
    (run_dir / "summary.json").write_text("{")
    code = main.main(["--report", str(run_dir)])
    hint = expect_error(capsys, code, "is damaged; run python main.py --resume r --output_dir")
    assert str(run_dir.parent) in hint
