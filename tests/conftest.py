"""Shared fixtures: tiny generated image folders and one tiny end-to-end run."""
from __future__ import annotations

import inspect
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime.process import prepare_process  # noqa: E402

prepare_process()

import cv2  # noqa: E402

import main  # noqa: E402
import utils.distill.signal as teacher_signal  # noqa: E402

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _, encoded = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    encoded.tofile(str(path))


def make_class_folders(root: Path, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """Noisy images whose colour gives their class: easy, but only if the pipeline works."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        for i in range(per_class):
            noise = rng.integers(-40, 40, size=(size, size + 8, 3))
            image = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            write_image(root / name / f"{name}_{i}.png", image)
    return root


def random_tensor_loaders():
    """Twelve random 32x32 tensors in 3 classes: a training loader (batches of 4) and an
    evaluation loader, for tests that drive train_model directly."""
    from utils.data.dataset import ImageDataset, make_loader

    rng = np.random.default_rng(0)
    images = list(rng.normal(size=(12, 3, 32, 32)).astype("float32"))
    labels = rng.integers(0, 3, size=12).astype("int64")
    dataset = ImageDataset(images, labels, transform=lambda image: image)
    return make_loader(dataset, 4, train=True, num_workers=0), make_loader(dataset, 12, train=False, num_workers=0)


@pytest.fixture(autouse=True)
def _run_from_a_scratch_folder(tmp_path_factory, monkeypatch) -> None:
    """Each test runs from a folder of its own, so a command's default output folder
    (inference.py's inference_scores/ and predictions_shown/) lands there, not in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# Fixtures that wait for the background jobs (`background_jobs`).
BACKGROUND_FIXTURES = {"runs", "late_rank_job", "repeated_launch"}


@pytest.fixture(scope="session", autouse=True)
def background_jobs(request, tmp_path_factory):
    """The data-parallel jobs of tests/test_distributed.py that mostly wait (the comparison runs,
    about 70 s on a delayed rank, then the late-rank job), started in the background as the
    session begins when their tests are to run: the serial tests leave a core idle meanwhile."""
    from tests.data_parallel_job import ComparisonRuns, LateRankJob, RepeatedLaunch

    wanted = {name for item in request.session.items if item.nodeid.startswith("tests/test_distributed.py")
              for name in item.fixturenames}
    jobs = {}
    if BACKGROUND_FIXTURES & wanted:
        jobs["runs"] = ComparisonRuns(tmp_path_factory.mktemp("distributed"))
    if {"late_rank_job", "repeated_launch"} & wanted:
        jobs["late_rank_job"] = LateRankJob(tmp_path_factory.mktemp("late"), after=jobs["runs"])
    if "repeated_launch" in wanted:
        jobs["repeated_launch"] = RepeatedLaunch(tmp_path_factory.mktemp("again"), jobs["runs"],
                                                 after=jobs["late_rank_job"])
    yield jobs
    for job in jobs.values():
        job.stop()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "data", per_class=10)


def tiny_run_args(data_dir: Path, out: Path, run_name: str, *extra: str) -> list[str]:
    """A run of a few seconds; the final student (a training of its own) only where a test asks for it.
    The teacher is a ResNet18: building, checkpointing and timing a ResNet50 (the default) made up a
    third of a tiny run; tests of the ResNet50 itself are in test_models and test_complexity."""
    return [
        "--data_dir", str(data_dir), "--num_folds", "2", "--epochs", "1", "--teacher_epochs", "1",
        "--img_size", "32", "--batch_size", "8", "--teacher_weights", "none", "--student_weights", "none",
        "--student", "mobilenet_v3_small", "--teacher", "resnet18", "--output_dir", str(out / "models_saved"),
        "--log_dir", str(out / "logs"), "--run_name", run_name, "--parallel_folds", "1", "--final_model", "false",
        "--preset", "full", *extra,
    ]


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """Run the pipeline once, recording which images each fold's teacher trained on."""
    out = tmp_path_factory.mktemp("run")
    data = tmp_path_factory.mktemp("data_with_junk") / "data"
    # The tiny set plus one corrupt image and one stray text file.
    for path in tiny_data.rglob("*.png"):
        target = data / path.relative_to(tiny_data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    (data / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "green" / "notes.txt").write_text("not an image")

    teacher_calls = []
    real_prepare = teacher_signal.prepare_teacher

    def spy(cfg, num_classes, hard_loss, cache_path, train_loader, val_loader, *args, **kwargs):
        teacher_calls.append((
            {id(image) for image in train_loader.dataset.images},
            {id(image) for image in val_loader.dataset.images},
        ))
        return real_prepare(cfg, num_classes, hard_loss, cache_path, train_loader, val_loader, *args, **kwargs)

    teacher_signal.prepare_teacher = spy
    try:
        code = main.main(tiny_run_args(data, out, "tiny", "--final_model", "true"))
    finally:
        teacher_signal.prepare_teacher = real_prepare
    assert code == 0
    return out, out / "models_saved" / "tiny", data, teacher_calls


def expect_error(capsys, code: int, expected: str, status: int = 2) -> str:
    """The command exited with `status` and said `expected` on stderr, with no traceback."""
    captured = capsys.readouterr()
    assert code == status, captured.err
    assert expected in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    return captured.err


@pytest.fixture(scope="module")
def finished_run_snapshot(tmp_path_factory):
    """A finished CE-only tiny run with its data (trained once), and a copy of both."""
    base = tmp_path_factory.mktemp("finished")
    data = make_class_folders(base / "work" / "data", per_class=6)
    assert main.main(tiny_run_args(data, base / "work", "r", "--kd", "none", "--final_model", "true")) == 0
    shutil.copytree(base / "work", base / "snapshot", symlinks=True)
    return base / "work", base / "snapshot"


@pytest.fixture
def finished_run(finished_run_snapshot):
    """The finished run and its data as they were written (restored from the copy, at the same
    paths, so that its records still match), for a test to damage."""
    work, snapshot = finished_run_snapshot
    shutil.rmtree(work)
    shutil.copytree(snapshot, work, symlinks=True)
    return work / "data", work / "models_saved" / "r"


# Fixtures that hand a test a trained run: a test using one, or calling main.main itself, trains.
TRAINED_FIXTURES = {"tiny_run", "trained_run", "visualdl_server", "runs", "finished_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that train `slow` (pyproject.toml), so `-m "not slow"` runs the quick ones;
    run the tests that wait for the background jobs last, so that the serial tests run meanwhile
    (tests/test_distributed.py's first test waited 45 s for them)."""
    items.sort(key=lambda item: bool(BACKGROUND_FIXTURES & set(getattr(item, "fixturenames", ()))))
    for item in items:
        function = getattr(item, "function", None)
        uses_run = TRAINED_FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_run or (function is not None and "main.main(" in inspect.getsource(function)):
            item.add_marker(pytest.mark.slow)
