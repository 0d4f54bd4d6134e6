"""Where things live on disk: a run's folders (its folds, its final student), the
newest run's pointer, the teacher cache and the VisualDL log folders. Written in
one place, and read by the pipeline, inference, export and the reports alike.

    <output_dir>/latest                    the newest run's name
    <output_dir>/teachers/                 trained teachers and their stored views, shared by runs
    <output_dir>/<run>/fold{k}/            fold k: best student, result.json (written last), history
    <output_dir>/<run>/final/              the final student, trained on every image
    <log_dir>/<run>/fold{k}|final|run/     VisualDL logs
    ~/.cache/paddle-kd-students/           per user (XDG_CACHE_HOME): built CPU operators, converted weights
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Optional, Union

LATEST_NAME = "latest"
TEACHERS_DIR = "teachers"
FINAL_DIR = "final"
RUN_LOG = "run"  # the run's own VisualDL record (hyper-parameters, out-of-fold results)
FOLD_RESULT = "result.json"  # a fold's last file: present only when the fold is finished
# Names inside output_dir that are not runs.
RESERVED_RUN_NAMES = (LATEST_NAME, TEACHERS_DIR)

# Every predictions CSV (oof_predictions.csv, test_predictions.csv, inference.py --output) names
# the folder's label and the model's answer so; runs before 2026-12-07 wrote "label" and "pred".
TRUE_LABEL, PREDICTED = "true_label", "predicted"

_FOLD_DIR = re.compile(r"fold(\d+)")


def resume_command(run: Path, *options: str) -> str:
    """The command that continues run folder `run`, as a line to paste: with its --output_dir
    always (the run may live anywhere), quoted where a path needs it."""
    run = Path(run)
    return shlex.join(["python", "main.py", "--resume", run.name, *options, "--output_dir", str(run.parent)])


def user_cache_dir() -> Path:
    """What this tool keeps for every run of the user's: the compiled CPU operators (per machine)
    and converted ImageNet weights."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "paddle-kd-students"


def run_dir(output_dir: Union[str, Path], run_name: str) -> Path:
    return Path(output_dir) / run_name


def latest_pointer(output_dir: Union[str, Path]) -> Path:
    return Path(output_dir) / LATEST_NAME


def teachers_dir(output_dir: Union[str, Path]) -> Path:
    return Path(output_dir) / TEACHERS_DIR


def fold_dir(run: Path, fold: int) -> Path:
    return run / f"fold{fold}"


def final_dir(run: Path) -> Path:
    return run / FINAL_DIR


def fold_of(directory: Path) -> Optional[int]:
    """k for a fold{k} folder; None for any other folder."""
    match = _FOLD_DIR.fullmatch(directory.name)
    return int(match.group(1)) if match else None


def fold_dirs(run: Path) -> dict[int, Path]:
    """The run's fold folders by fold number, finished or not."""
    return {k: d for d in sorted(run.glob("fold*")) if d.is_dir() and (k := fold_of(d)) is not None}


def is_finished_fold(directory: Path) -> bool:
    return (directory / FOLD_RESULT).is_file()


def log_dir(logs: Union[str, Path], run_name: str, part: Union[int, str]) -> Path:
    """A VisualDL folder of the run: a fold's (an int), FINAL_DIR or RUN_LOG."""
    return Path(logs) / run_name / (f"fold{part}" if isinstance(part, int) else part)
