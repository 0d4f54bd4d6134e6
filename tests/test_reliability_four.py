"""Reliability round four: no output replaces an input, the same pixels never under two labels
(nor on both sides of a fold), damaged or edited model files get one line. Each test
reproduces one row of the adversarial user's table (issue 36)."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import export
import inference
import main
from tests.conftest import expect_error, make_class_folders, tiny_run_args


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
