"""Shared fixtures: tiny generated image folders and one tiny end-to-end run."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils.runtime import tune_cpu_environment  # noqa: E402

tune_cpu_environment()

import cv2  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("tiny") / "data", per_class=10)


def tiny_run_args(data_dir: Path, out: Path, run_name: str, *extra: str) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--num_folds", "2", "--epochs", "1", "--teacher_epochs", "1",
        "--img_size", "32", "--batch_size", "8", "--teacher_weights", "none", "--student_weights", "none",
        "--student", "mobilenet_v3_small", "--output_dir", str(out / "models_saved"),
        "--log_dir", str(out / "logs"), "--run_name", run_name, *extra,
    ]
