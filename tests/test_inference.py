"""inference.py on the tiny run's models: files, folders, ensembles and bad input."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

import inference


def test_folder_with_bad_files_classifies_the_good_ones(tiny_run, tmp_path, capsys):
    out, run_dir, data, _ = tiny_run
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in sorted((data / "red").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("not an image")  # not an image name: not even tried
    output = tmp_path / "preds.csv"
    code = inference.main(["--image_path", str(folder), "--model_path", str(run_dir),
                           "--output", str(output), "--topk", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "corrupt.jpg  cannot be read" in captured.err and "empty.png  cannot be read" in captured.err
    assert "3 classified, 2 failed" in captured.out
    rows = list(csv.DictReader(open(output, newline="")))
    assert len(rows) == 3 and all(r["predicted"] in ("blue", "green", "red") for r in rows)
    assert all(len(r["topk"].split(";")) == 2 for r in rows)


def test_default_model_is_the_latest_run_and_single_fold_differs_from_ensemble(tiny_run, tmp_path, capsys,
                                                                                 monkeypatch):
    out, run_dir, data, _ = tiny_run
    image = sorted((data / "blue").glob("*.png"))[0]
    monkeypatch.chdir(out)  # models_saved/latest lives here
    assert inference.main(["--image_path", str(image), "--output", str(tmp_path / "all.json")]) == 0
    assert inference.main(["--image_path", str(image), "--fold", "0",
                           "--output", str(tmp_path / "one.json")]) == 0
    ensemble = json.loads((tmp_path / "all.json").read_text())[0]
    single = json.loads((tmp_path / "one.json").read_text())[0]
    assert ensemble["predicted"] in ("blue", "green", "red")
    assert ensemble["confidence"] != single["confidence"]


def test_recursive_folder_and_usage_errors(tiny_run, tmp_path, capsys):
    out, run_dir, data, _ = tiny_run
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert inference.main(["--image_path", str(tmp_path / "empty"), "--model_path", str(run_dir)]) == 2
    assert "no images in" in capsys.readouterr().err
    assert inference.main(["--image_path", str(data), "--model_path", str(run_dir), "--recursive"]) == 1
    assert "30 classified, 1 failed" in capsys.readouterr().out  # the tiny run's corrupt.jpg
    assert inference.main(["--image_path", str(data), "--model_path", str(run_dir), "--recursive",
                           "--categories", "a,b"]) == 2
    assert "the model has 3" in capsys.readouterr().err
    assert inference.main(["--image_path", str(data), "--model_path", str(out / "nowhere")]) == 2


@pytest.mark.parametrize("export_format, backend", [("paddle", "paddle"), ("onnx", "onnxruntime")])
def test_exported_model_matches_the_dynamic_graph(tiny_run, tmp_path, capsys, export_format, backend):
    import export

    out, run_dir, data, _ = tiny_run
    exported = tmp_path / "exported"
    assert export.main(["--model_path", str(run_dir), "--export_dir", str(exported), "--format", export_format,
                        "--ensemble"]) == 0
    assert (exported / "fold0" / "model.pdiparams").is_file() and (exported / "fold1" / "best.json").is_file()
    assert (exported / "fold1" / "model.onnx").is_file() == (export_format == "onnx")
    images = str(data / "green")
    assert inference.main(["--image_path", images, "--model_path", str(run_dir), "--ensemble",
                           "--output", str(tmp_path / "dynamic.json"), "--topk", "3"]) == 0
    assert inference.main(["--image_path", images, "--model_path", str(exported), "--backend", backend,
                           "--output", str(tmp_path / "exported.json"), "--topk", "3"]) == 0
    dynamic = json.loads((tmp_path / "dynamic.json").read_text())
    fast = json.loads((tmp_path / "exported.json").read_text())
    assert [p["predicted"] for p in fast] == [p["predicted"] for p in dynamic] and len(fast) == 10
    for a, b in zip(dynamic, fast):
        for (label_a, conf_a), (label_b, conf_b) in zip(a["top"], b["top"]):
            assert label_a == label_b and abs(conf_a - conf_b) < 1e-4


def test_onnxruntime_needs_an_onnx_export(tiny_run, capsys):
    out, run_dir, data, _ = tiny_run
    assert inference.main(["--image_path", str(data / "green"), "--model_path", str(run_dir),
                           "--backend", "onnxruntime"]) == 2
    assert "export" in capsys.readouterr().err


def test_show_writes_annotated_copies(tiny_run, tmp_path, capsys):
    out, run_dir, data, _ = tiny_run
    image = sorted((data / "red").glob("*.png"))[0]
    shown = tmp_path / "shown"
    assert inference.main(["--image_path", str(image), "--model_path", str(run_dir), "--show",
                           "--show_dir", str(shown)]) == 0
    annotated = cv2.imread(str(shown / f"{image.stem}.png"))
    original = cv2.imread(str(image))
    assert annotated.shape == original.shape and not np.array_equal(annotated, original)


def test_the_specs_temperature_calibrates_every_backend_alike_and_min_confidence_says_unsure(tiny_run, tmp_path):
    """A final model whose best.json carries temperature 3: the dynamic graph, Paddle Inference
    and ONNX Runtime give the same calibrated probabilities, softmax(logits / 3), and
    --raw_probabilities the model's own."""
    import shutil

    from scipy.special import softmax

    import export

    out, run_dir, data, _ = tiny_run
    model = tmp_path / "final"
    shutil.copytree(run_dir / "final", model)
    spec = json.loads((model / "best.json").read_text())
    spec["temperature"] = 3.0
    (model / "best.json").write_text(json.dumps(spec))
    assert export.main(["--model_path", str(model), "--export_dir", str(tmp_path / "exported"),
                        "--format", "onnx"]) == 0
    images = str(data / "green")

    def probabilities(name: str, *flags: str) -> np.ndarray:
        output = tmp_path / f"{name}.json"
        assert inference.main(["--image_path", images, "--output", str(output), "--topk", "3", *flags]) == 0
        rows = json.loads(output.read_text())
        return np.array([[dict(row["top"])[c] for c in ("blue", "green", "red")] for row in rows])

    raw = probabilities("raw", "--model_path", str(model), "--raw_probabilities")
    dynamic = probabilities("dynamic", "--model_path", str(model))
    paddle_inference = probabilities("paddle", "--model_path", str(tmp_path / "exported"))
    onnx = probabilities("onnx", "--model_path", str(tmp_path / "exported"), "--backend", "onnxruntime")
    np.testing.assert_allclose(dynamic, softmax(np.log(raw) / 3.0, axis=1), atol=1e-4)
    assert np.abs(dynamic - raw).max() > 1e-3  # the temperature changed them
    np.testing.assert_allclose(paddle_inference, dynamic, atol=1e-4)
    np.testing.assert_allclose(onnx, dynamic, atol=1e-4)

    output = tmp_path / "unsure.csv"
    assert inference.main(["--image_path", images, "--model_path", str(model), "--min_confidence", "1",
                           "--output", str(output), "--topk", "2"]) == 0
    rows = list(csv.DictReader(open(output, newline="")))
    assert rows and all(r["predicted"] == "unsure" and len(r["topk"].split(";")) == 2 for r in rows)
    assert inference.main(["--image_path", images, "--model_path", str(model), "--min_confidence", "1.5"]) == 2


def test_a_labelled_folder_is_scored_by_its_class_folders(tiny_run, tmp_path, capsys):
    out, run_dir, data, _ = tiny_run
    labelled = tmp_path / "test"
    for path in sorted(data.rglob("*.png")):
        target = labelled / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    output, scores = tmp_path / "preds.csv", tmp_path / "scores"
    # class folders and no --recursive: the sub-folders are read, and are the labels
    assert inference.main(["--image_path", str(labelled), "--model_path", str(run_dir), "--output", str(output),
                           "--score_dir", str(scores)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(output, newline="")))
    expected = np.mean([row["predicted"] == row["path"].split("/")[-2] for row in rows])
    assert len(rows) == 30 and f"accuracy {expected:.4f} on 30 images labelled by their folders" in printed
    assert "precision" in printed and (scores / "confusion_matrix.png").is_file()
    assert (scores / "classification_report.txt").is_file()
    # a folder that is not one of the model's classes: not scored by default, refused when asked for
    (labelled / "purple").mkdir()
    (labelled / "purple" / "p.png").write_bytes(next(labelled.rglob("*.png")).read_bytes())
    assert inference.main(["--image_path", str(labelled), "--model_path", str(run_dir)]) == 0
    assert "accuracy" not in capsys.readouterr().out
    assert inference.main(["--image_path", str(labelled), "--model_path", str(run_dir),
                           "--labels_from_folders", "true"]) == 2
    assert "purple under" in capsys.readouterr().err
