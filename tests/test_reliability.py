"""Reliability round two: a run knows the data it trained on, one process writes a run,
folders and images cannot hang or explode the tool, every option and file is checked,
and weights files are not code. Each test reproduces one case an adversarial user tried."""
from __future__ import annotations

import csv
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import export
import inference
import main
from tests.conftest import expect_error as _error
from tests.conftest import make_class_folders, tiny_run_args, write_image
from utils.data.folders import drop_duplicates, scan_dataset
from utils.data.images import MAX_ASPECT_RATIO, load_images
from utils.data.manifest import DigestCache, build_manifest
from utils.deploy.checkpoint import read_meta
from utils.distill import teachers
from utils.distill.teachers import teacher_cache_key
from utils.pipeline.folds import teacher_setup
from utils.runtime.config import DEFAULT_CONFIG, build_config, read_yaml
from utils.runtime.errors import UserError
from utils.runtime.files import SCRATCH_PREFIX, exclusive_lock, file_digest, scratch_dir, write_csv_atomic
from utils.runtime.weights_file import UnreadableWeights, load_weights_file, save_weights_file

ROOT = Path(__file__).resolve().parent.parent


def _resume(run_dir):
    return main.main(["--resume", run_dir.name, "--output_dir", str(run_dir.parent)])


def test_images_added_after_a_run_began_are_named_and_the_run_is_refused(finished_run, capsys):
    data, run_dir = finished_run
    summary = (run_dir / "summary.json").read_bytes()
    write_image(data / "red" / "new_1.png", np.full((20, 20, 3), 200, np.uint8))
    write_image(data / "red" / "new_2.png", np.full((20, 20, 3), 190, np.uint8))
    capsys.readouterr()
    _error(capsys, _resume(run_dir), "2 image(s) added (red/new_1.png, red/new_2.png)")
    assert (run_dir / "summary.json").read_bytes() == summary  # nothing lost


def test_one_image_swapped_for_another_is_named(finished_run, capsys):
    data, run_dir = finished_run
    (data / "green" / "green_0.png").rename(data / "green" / "green_renamed.png")
    capsys.readouterr()
    err = _error(capsys, _resume(run_dir), "1 image(s) added (green/green_renamed.png)")
    assert "1 image(s) removed (green/green_0.png)" in err


def test_a_renamed_class_folder_is_named(finished_run, capsys):
    data, run_dir = finished_run
    (data / "red").rename(data / "rouge")
    capsys.readouterr()
    _error(capsys, _resume(run_dir), "class folders gone: red; new: rouge")


def test_a_photo_replaced_by_another_of_the_same_size_is_seen(finished_run, capsys):
    data, run_dir = finished_run
    photo = data / "blue" / "blue_1.png"
    other = (data / "blue" / "blue_2.png").read_bytes()
    before = photo.stat().st_size
    content = other[:before].ljust(before, b"\0")
    photo.write_bytes(content)
    assert photo.stat().st_size == before
    capsys.readouterr()
    _error(capsys, _resume(run_dir), "1 image(s) changed (blue/blue_1.png)")


def test_a_photo_replaced_with_its_old_time_copied_back_is_seen_with_verify_data(finished_run, capsys):
    # Size and modification time unchanged: taken as unchanged (the documented trade-off), unless
    # --verify_data reads every file again.
    data, run_dir = finished_run
    photo = data / "blue" / "blue_1.png"
    before = photo.stat()
    content = (data / "blue" / "blue_2.png").read_bytes()[:before.st_size].ljust(before.st_size, b"\0")
    photo.write_bytes(content)
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert _resume(run_dir) == 0
    capsys.readouterr()
    _error(capsys, main.main(["--resume", run_dir.name, "--output_dir", str(run_dir.parent), "--verify_data"]),
           "1 image(s) changed (blue/blue_1.png)")


def test_teachers_are_cached_by_content_not_by_path_and_size(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    cfg = build_config(read_yaml(DEFAULT_CONFIG))
    index = scan_dataset(data)

    def key() -> str:
        manifest = build_manifest(index, data, DigestCache(tmp_path / "digests.json"))
        digests = manifest.digests_by_path(data)
        return teacher_cache_key(teacher_setup(cfg), [digests[s.path] for s in index.samples],
                                 [s.label for s in index.samples], np.arange(5), 0)

    first = key()
    photo = Path(index.samples[0].path)
    size = photo.stat().st_size
    photo.write_bytes(bytes(size))
    os.utime(photo, ns=(photo.stat().st_atime_ns, photo.stat().st_mtime_ns + 10**9))
    assert key() != first


def test_a_run_directory_is_written_by_one_process_at_a_time(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "models_saved" / "r"
    run_dir.mkdir(parents=True)
    with exclusive_lock(run_dir / ".lock", "run r"):
        code = main.main(tiny_run_args(tiny_data, tmp_path, "r"))
    _error(capsys, code, f"run r is in use by process {os.getpid()}")
    assert not (run_dir / "config.yaml").exists()


def test_symlink_loops_in_every_class_end_and_are_reported(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    for name in ("red", "green", "blue"):
        (data / name / "loop").symlink_to(data, target_is_directory=True)
        (data / name / "self").symlink_to(data / name, target_is_directory=True)
    start = time.perf_counter()
    index = scan_dataset(data)
    assert time.perf_counter() - start < 10
    assert len(index.samples) == 9 and index.classes == ["blue", "green", "red"]
    loops = [s for s in index.skipped if "a loop or another class" in s.reason]
    assert len(loops) == 6


def test_the_same_file_under_two_classes_is_left_out_of_both(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    (data / "green" / "also_red.png").symlink_to(data / "red" / "red_0.png")
    index = scan_dataset(data)
    index, _ = drop_duplicates(index, {s.path: file_digest(s.path) for s in index.samples}, data)
    assert len(index.samples) == 8  # 9 images and the link, less both copies of red_0
    reasons = {Path(s.path).name: s.reason for s in index.skipped}
    assert "under classes green and red" in reasons["red_0.png"] and "under classes green and red" in \
        reasons["also_red.png"]


def test_a_symlinked_class_folder_outside_the_data_is_a_class_of_its_own(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    elsewhere = make_class_folders(tmp_path / "elsewhere", per_class=2)
    (data / "linked").symlink_to(elsewhere / "blue", target_is_directory=True)
    index = scan_dataset(data)
    assert index.classes == ["blue", "green", "linked", "red"]
    assert sum(s.label == index.classes.index("linked") for s in index.samples) == 2


def test_class_folders_beside_train_and_val_are_refused(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=3)
    make_class_folders(data / "train", per_class=3)
    make_class_folders(data / "val", per_class=3)
    with pytest.raises(UserError, match="use one layout"):
        scan_dataset(data)


def _strip(path: Path) -> Path:
    write_image(path, np.full((1, 1000 * MAX_ASPECT_RATIO, 3), 128, np.uint8))
    return path


def test_an_extremely_elongated_image_is_skipped_with_its_reason(tmp_path):
    strip = _strip(tmp_path / "strip.png")
    images, kept, skipped = load_images([type("S", (), {"path": str(strip), "label": 0})()], 256)
    assert not kept and "more elongated than 20:1" in skipped[0].reason


def test_a_run_with_a_one_pixel_high_strip_finishes_and_lists_it(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=5)
    _strip(data / "red" / "strip.png")
    args = tiny_run_args(data, tmp_path, "r", "--kd", "none", "--img_size", "224")
    process = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                             timeout=240)
    assert process.returncode == 0, process.stderr[-2000:]
    assert "strip.png (20000x1 pixels: more elongated than 20:1)" in process.stdout


def test_inference_reports_the_strip_and_classifies_the_rest(finished_run, tmp_path, capsys):
    data, run_dir = finished_run
    folder = tmp_path / "to_classify"
    shutil.copytree(data / "red", folder)
    _strip(folder / "strip.png")
    capsys.readouterr()
    code = inference.main(["--image_path", str(folder), "--model_path", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 1 and "strip.png  cannot be read: 20000x1 pixels" in captured.err
    assert "6 classified, 1 failed" in captured.out and "Traceback" not in captured.err


def test_an_exception_while_reading_images_reaches_the_training_loop_at_once():
    from utils.data.dataset import ImageDataset, make_loader

    def transform(image):
        if image[0, 0, 0] == 3:
            raise MemoryError("no room")
        return image.astype("float32").transpose(2, 0, 1)

    images = [np.full((4, 4, 3), i, np.uint8) for i in range(10)]
    loader = make_loader(ImageDataset(images, np.zeros(10, np.int64), transform), 4, train=False, num_workers=0)
    with pytest.raises(MemoryError):
        for _ in loader:
            pass


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "inf", "lr must be a finite number"),
    ("--mixup_alpha", "inf", "mixup_alpha must be a finite number"),
    ("--temperature", "inf", "temperature must be a finite number"),
    ("--weight_decay", "inf", "weight_decay must be a finite number"),
    ("--teacher_lr", "inf", "teacher_lr must be a finite number"),
    ("--lr", "nan", "lr must be a finite number"),
    ("--lr", "5", "lr must be in (0, 1]"),
    ("--seed", "-1", "seed must be between 0 and 2**32 - 1"),
    ("--run_name", "../x", "run_name must be one folder name"),
    ("--run_name", "/tmp/x", "run_name must be one folder name"),
    ("--run_name", "latest", "run_name must be one folder name"),
    ("--run_name", "teachers", "run_name must be one folder name"),
])
def test_bad_values_stop_before_any_work(tiny_data, tmp_path, capsys, flag, value, message):
    args = tiny_run_args(tiny_data, tmp_path, "r") + [flag, value]
    _error(capsys, main.main(args), message)
    assert not (tmp_path / "models_saved").exists()


@pytest.mark.parametrize("flag", ["--output_dir", "--log_dir"])
def test_outputs_inside_the_data_directory_are_refused(tmp_path, capsys, flag):
    data = make_class_folders(tmp_path / "data", per_class=3)
    args = tiny_run_args(data, tmp_path, "r") + [flag, str(data / "outputs")]
    _error(capsys, main.main(args), f"{flag} {data / 'outputs'} is inside --data_dir")
    assert sorted(p.name for p in data.iterdir()) == ["blue", "green", "red"]


def _set_meta(run_dir: Path, **changes) -> None:
    meta_path = run_dir / "fold0" / "best.json"
    meta = json.loads(meta_path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("changes,message", [
    ({"img_size": 100000}, "img_size must be a whole number from 32 to 1024"),
    ({"img_size": -5}, "img_size must be a whole number from 32 to 1024"),
    ({"img_size": "big"}, "img_size must be a whole number from 32 to 1024"),
    ({"student_width": 1000}, "student_width must be a number between 0.1 and 4"),
    ({"classes": None}, "classes must be a list of at least two different class names"),
])
def test_a_bad_best_json_gives_one_line(finished_run, capsys, changes, message):
    _, run_dir = finished_run
    _set_meta(run_dir, **changes)
    capsys.readouterr()
    code = inference.main(["--image_path", str(finished_run[0] / "red"), "--model_path", str(run_dir / "fold0")])
    _error(capsys, code, message)


@pytest.mark.parametrize("content", [b"", b"not weights at all", random.Random(0).randbytes(3000),
                                     pickle.dumps([1, 2, 3])])
def test_an_unreadable_weights_file_gives_one_line(finished_run, capsys, content):
    _, run_dir = finished_run
    (run_dir / "fold0" / "best.pdparams").write_bytes(content)
    capsys.readouterr()
    code = inference.main(["--image_path", str(finished_run[0] / "red"), "--model_path", str(run_dir / "fold0")])
    _error(capsys, code, "best.pdparams")


class _CreatesAFile:
    """A pickle that would create a file when loaded."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_crafted_weights_file_never_runs_its_code(finished_run, tmp_path, capsys):
    data, run_dir = finished_run
    target = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pdparams"
    crafted.write_bytes(pickle.dumps({"weight": _CreatesAFile(target)}))
    shutil.copy(crafted, run_dir / "fold0" / "best.pdparams")
    attempts = [
        inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir / "fold0")]),
        main.main(tiny_run_args(data, tmp_path, "s1", "--student_weights", str(crafted))),
        main.main(tiny_run_args(data, tmp_path, "s2", "--teacher_weights", str(crafted))),
    ]
    captured = capsys.readouterr()
    assert attempts == [2, 2, 2] and "Traceback" not in captured.err
    assert captured.err.count("refers to posix.system") == 3
    assert not target.exists()


def test_report_on_a_damaged_run_gives_one_line(finished_run, capsys):
    _, run_dir = finished_run
    summary = run_dir / "summary.json"
    summary.write_text(summary.read_text()[:40])
    capsys.readouterr()
    _error(capsys, main.main(["--report", str(run_dir)]), "summary.json is damaged")
    (run_dir / "oof_predictions.csv").unlink()
    _error(capsys, main.main(["--report", str(run_dir)]), "oof_predictions.csv missing")


def test_an_unfinished_run_is_used_only_when_asked(finished_run, tmp_path, capsys):
    data, run_dir = finished_run
    shutil.rmtree(run_dir / "fold1")
    capsys.readouterr()
    for entry in (inference.main, export.main):
        extra = ["--image_path", str(data / "red")] if entry is inference.main else \
            ["--export_dir", str(tmp_path / "exported")]
        _error(capsys, entry(["--model_path", str(run_dir), "--ensemble", *extra]), "1 of 2 folds finished")
        assert entry(["--model_path", str(run_dir), "--ensemble", "--allow_partial", *extra]) == 0
    shutil.rmtree(run_dir / "final")
    _error(capsys, inference.main(["--model_path", str(run_dir), "--image_path", str(data / "red")]),
           "1 of 2 folds finished")


def test_a_killed_processes_scratch_folder_is_removed_by_the_next_one(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}{dead.pid}"
    (stale / "model").mkdir(parents=True)
    with scratch_dir(tmp_path) as mine:
        assert mine.is_dir() and not stale.exists()
    assert not mine.exists()


def _random_value(rng: np.random.Generator):
    choices = [None, True, -1, 0, 3, 10**12, -5.5, float("nan"), 1e308, "", "big", "none", [], [1, 2, 3],
               ["a", "a"], {"x": 1}, "all", 32, 224, "random_resized", "mobilenet_v3_small", [0.5, 0.5, 0.5]]
    return choices[int(rng.integers(len(choices)))]


def test_fuzzed_best_json_never_gives_a_traceback(tmp_path):
    fields = ["classes", "student", "student_width", "attention", "attention_blocks", "img_size", "crop", "mean",
              "std"]
    good = {"classes": ["a", "b"], "student": "mobilenet_v3_small", "student_width": 0.5, "attention": "none",
            "attention_blocks": "all", "img_size": 32, "crop": "pad", "mean": [0.5] * 3, "std": [0.5] * 3}
    rng = np.random.default_rng(0)
    path = tmp_path / "best.json"
    accepted = 0
    for _ in range(400):
        meta = dict(good)
        for field in rng.choice(fields, size=int(rng.integers(1, 4)), replace=False):
            meta[str(field)] = _random_value(rng)
        path.write_text(json.dumps(meta))
        try:
            spec, _ = read_meta(path)
        except UserError as error:
            assert "\n" not in str(error)
            continue
        accepted += 1
        assert 32 <= spec.img_size <= 1024 and 0.1 <= spec.student_width <= 4 and len(spec.classes) >= 2
    assert 0 < accepted < 400


def test_fuzzed_weights_files_never_run_code_or_give_a_traceback(finished_run, tmp_path):
    _, run_dir = finished_run
    real = (run_dir / "fold0" / "best.pdparams").read_bytes()
    target = tmp_path / "created"
    rng = np.random.default_rng(1)
    crafted = [
        pickle.dumps(_CreatesAFile(target)),
        pickle.dumps({"w": _CreatesAFile(target)}, protocol=2),
        b"cbuiltins\nopen\n(S'" + str(target).encode() + b"'\nS'w'\ntR.",
        b"cbuiltins\neval\n(S'__import__(\"os\").system(\"touch " + str(target).encode() + b"\")'\ntR.",
        b"csubprocess\nPopen\n((S'touch'\nS'" + str(target).encode() + b"'\nltR.",
        b"cnumpy\nndarray\n((I10000000000\ntS'b'\ntR.",  # ndarray() called directly: 10 GB
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I10000000000\ntS'b'\ntR.",  # 10 GB of bytes
        b"cbuiltins\nbytearray\n(I10000000000\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\nlist\nS'__class__'\ntR.",
    ]
    candidates = crafted + [real[:n] for n in (0, 1, 10, 100, len(real) // 2, len(real) - 1)] + \
        [rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes() for _ in range(100)]
    path = tmp_path / "fuzz.pdparams"
    for content in candidates:
        path.write_bytes(content)
        try:
            load_weights_file(path)
        except UnreadableWeights as error:
            assert "\n" not in str(error)
    assert not target.exists()
    path.write_bytes(real)
    assert isinstance(load_weights_file(path), dict)


# Round three: each test reproduces one row of the adversarial user's table.

BAD_NAME = os.fsdecode(b"bad\xff\xfe.png")  # not valid UTF-8: a surrogate-escaped str, as os.listdir gives


def test_a_file_name_that_is_not_utf8_is_written_back_with_its_bytes(finished_run, tmp_path, capsys):
    """Rows 1 and 2: the run's CSV files (oof_predictions.csv, read back by the report) and
    inference's --output keep such a name's bytes, and every other prediction is written too."""
    data, run_dir = finished_run
    oof = run_dir / "oof_predictions.csv"
    with open(oof, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows[1][0] = str(data / "red" / BAD_NAME)
    write_csv_atomic(oof, rows[0], rows[1:])
    assert os.fsencode(BAD_NAME) in oof.read_bytes()
    assert main.main(["--report", str(run_dir)]) == 0
    odd = tmp_path / "odd"
    shutil.copytree(data / "red", odd)
    shutil.copy(odd / "red_0.png", os.fsencode(odd) + b"/bad\xff\xfe.png")
    out = tmp_path / "preds.csv"
    capsys.readouterr()
    assert inference.main(["--image_path", str(odd), "--model_path", str(run_dir), "--output", str(out)]) == 0
    assert BAD_NAME.encode("utf-8", "backslashreplace").decode() in capsys.readouterr().out
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert len(paths) == 7 and str(odd / BAD_NAME) in paths


def test_a_fold_without_its_result_is_not_served(finished_run, capsys):
    """Row 6: a fold counts as finished only with its result.json."""
    data, run_dir = finished_run
    for name in ("summary.json", "fold1/result.json"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "final")
    capsys.readouterr()
    _error(capsys, inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir)]),
           "1 of 2 folds finished")
    (run_dir / "fold0/result.json").unlink()
    _error(capsys, inference.main(["--image_path", str(data / "red"), "--model_path", str(run_dir),
                                   "--allow_partial"]), "0 of 2 folds finished")


def test_a_copied_run_resumes_from_its_new_place(finished_run, tmp_path, capsys):
    """Row 10: --resume with --output_dir naming a copy of the run elsewhere."""
    _, run_dir = finished_run
    elsewhere = tmp_path / "moved"
    shutil.copytree(run_dir.parent, elsewhere, symlinks=True)
    capsys.readouterr()
    assert main.main(["--resume", run_dir.name, "--output_dir", str(elsewhere)]) == 0
    assert "already exists with other settings" not in capsys.readouterr().err


def test_a_truncated_fold_result_or_spec_means_the_fold_trains_again(finished_run, capsys):
    """Rows 7 and 8: a damaged result.json or best.json is repaired on --resume."""
    _, run_dir = finished_run
    for name in ("fold0/result.json", "fold1/best.json"):
        path = run_dir / name
        path.write_bytes(path.read_bytes()[:20])
    capsys.readouterr()
    assert _resume(run_dir) == 0
    out = capsys.readouterr().out
    assert "fold0: its saved files are damaged" in out and "fold1: its saved files are damaged" in out
    for name in ("fold0/result.json", "fold1/best.json"):
        json.loads((run_dir / name).read_text())
    assert inference.main(["--image_path", str(finished_run[0] / "red"), "--model_path", str(run_dir),
                           "--ensemble"]) == 0


def test_a_truncated_cached_teacher_is_moved_aside_and_trained_again(tmp_path, capsys):
    """Row 9: a damaged teacher cache entry no longer blocks every run with its settings."""
    cached = tmp_path / "teachers" / "0123.pdparams"
    cached.parent.mkdir()
    save_weights_file(cached, {"fc.weight": np.zeros((4, 3), np.float32)})
    cached.with_suffix(".json").write_text(json.dumps({"val_acc": 0.5}))
    assert teachers.read_cached(cached)[1] == {"val_acc": 0.5}
    cached.write_bytes(cached.read_bytes()[:60])
    assert teachers.read_cached(cached) is None
    assert "is damaged: moved aside (*.damaged), training it again" in capsys.readouterr().out
    assert not teachers.is_cached(cached) and cached.with_name(cached.name + ".damaged").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--batch_size", "100000000"], "batch_size 100000000 is larger than the whole dataset (18 images)"),
    (["--num_folds", "20"], "fewer readable images than num_folds=20"),
])
def test_data_checks_come_before_anything_is_written(tmp_path, capsys, extra, message):
    """Rows 12 and 13: refused in one line, and no run folder (config.yaml, dataset.json) left behind."""
    data = make_class_folders(tmp_path / "data", per_class=6)
    _error(capsys, main.main(tiny_run_args(data, tmp_path, "r", *extra)), message)
    assert not (tmp_path / "models_saved" / "r").exists()
