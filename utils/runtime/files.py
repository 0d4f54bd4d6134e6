"""Writing files so that a reader never sees half of one."""
from __future__ import annotations

import os
from pathlib import Path


def partial_path(path: Path) -> Path:
    """Where to write `path` before renaming it into place with os.replace. Unique per
    process: two processes writing the same file (two runs training one cached teacher
    at once) never write into each other's partial file."""
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")
