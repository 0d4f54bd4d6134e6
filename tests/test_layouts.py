"""Data laid out as public datasets are: class folders, or train/ with val/ (valid/,
validation/) and/or test/ beside it; anything ambiguous is refused in one line."""
from __future__ import annotations

import pytest

import main
from tests.conftest import make_class_folders, tiny_run_args
from utils.data.folders import scan_dataset
from utils.runtime.errors import DataError


@pytest.mark.parametrize("splits,pooled,held_out", [
    (("train", "test"), 9, 6),
    (("train", "valid"), 15, 0),
    (("Train", "Validation"), 15, 0),
    (("train", "val", "test"), 15, 6),
    (("training", "dev", "testing"), 15, 6),
])
def test_split_layouts_are_recognised(tmp_path, splits, pooled, held_out):
    for name, per_class in zip(splits, (3, 2, 2)):
        make_class_folders(tmp_path / name, per_class=per_class, seed=len(name))
    index = scan_dataset(tmp_path)
    assert index.classes == ["blue", "green", "red"]  # never the split names
    assert (len(index.samples), len(index.test_samples)) == (pooled, held_out)


@pytest.mark.parametrize("make,message", [
    (lambda root: [make_class_folders(root / "val", 2), make_class_folders(root / "test", 2)],
     "holds split folders (val/, test/) but no train/ with class folders in it"),
    (lambda root: [make_class_folders(root / "val", 2), make_class_folders(root / "valid", 2),
                   make_class_folders(root / "train", 2)], "holds val/ and valid/, which name the same split"),
    (lambda root: [make_class_folders(root / "train", 2), make_class_folders(root, 2)],
     "holds split folders (train/) and also class folders (blue, green, red)"),
])
def test_ambiguous_layouts_are_refused_naming_the_layouts_understood(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError) as error:
        scan_dataset(tmp_path)
    assert message in str(error.value) and "understood: class folders; or train/" in str(error.value)


def test_a_train_test_dataset_trains_on_its_classes_and_scores_its_test_split(tmp_path, capsys):
    make_class_folders(tmp_path / "data" / "train", per_class=6)
    make_class_folders(tmp_path / "data" / "test", per_class=2, seed=3)
    assert main.main(tiny_run_args(tmp_path / "data", tmp_path, "tt", "--kd", "none")) == 0
    out = capsys.readouterr().out
    assert "18 images in 3 classes" in out and "held-out test set (6 images)" in out
