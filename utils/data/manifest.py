"""What a run trained on: the class list and every image's path, label, size,
modification time and content digest, saved in the run directory as dataset.json.
A resumed or repeated run compares the data with it, and refuses to go on with
data that changed; teachers are cached by these content digests."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from utils.data.folders import DatasetIndex
from utils.runtime.errors import DataError, examples
from utils.runtime.files import file_digest, write_json_atomic

MANIFEST_NAME = "dataset.json"
EXAMPLES = 3  # file names shown per kind of change


class DigestCache:
    """Content digests of files, recomputed only when a file's size or modification time
    changed (or always, with `verify`); kept in one JSON file (in output_dir) across runs."""

    def __init__(self, path: Path, verify: bool = False) -> None:
        self.path, self.verify = path, verify
        try:
            self.known = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.known = {}
        if not isinstance(self.known, dict):
            self.known = {}

    def digest(self, path: str, size: int, mtime_ns: int) -> str:
        key = os.path.abspath(path)
        cached = self.known.get(key)
        if not self.verify and isinstance(cached, list) and cached[:2] == [size, mtime_ns]:
            return cached[2]
        value = file_digest(path)
        self.known[key] = [size, mtime_ns, value]
        return value

    def save(self) -> None:
        write_json_atomic(self.path, self.known)


@dataclasses.dataclass
class Manifest:
    classes: list[str]
    files: list[list[Any]]  # [path relative to the data directory, label, size, mtime_ns, sha256]
    digest: str  # of the class list and every file's entry

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digests_by_path(self, data_dir: Path) -> dict[str, str]:
        return {str(data_dir / entry[0]): entry[4] for entry in self.files}


def build_manifest(index: DatasetIndex, data_dir: Path, cache: DigestCache) -> Manifest:
    files = []
    for sample in [*index.samples, *index.test_samples]:
        stat = os.stat(sample.path)
        files.append([os.path.relpath(sample.path, data_dir), sample.label, stat.st_size, stat.st_mtime_ns,
                      cache.digest(sample.path, stat.st_size, stat.st_mtime_ns)])
    cache.save()
    digest = hashlib.sha256(json.dumps([index.classes, files]).encode()).hexdigest()
    return Manifest(index.classes, files, digest)


def describe_changes(old: Manifest, new: Manifest) -> Optional[str]:
    """What changed between two manifests, in words; None when nothing did."""
    if old.digest == new.digest:
        return None
    changes = []
    gone, added_classes = sorted(set(old.classes) - set(new.classes)), sorted(set(new.classes) - set(old.classes))
    if gone or added_classes:
        changes.append(f"class folders gone: {', '.join(gone) or 'none'}; new: {', '.join(added_classes) or 'none'}")
    before = {entry[0]: entry for entry in old.files}
    after = {entry[0]: entry for entry in new.files}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    relabelled = sorted(p for p in set(before) & set(after)
                        if old.classes[before[p][1]] != new.classes[after[p][1]])
    changed = sorted(p for p in set(before) & set(after) if before[p][4] != after[p][4] and p not in relabelled)
    for count, what in ((added, "added"), (removed, "removed"), (changed, "changed"), (relabelled, "in another class")):
        if count:
            changes.append(f"{len(count)} image(s) {what} ({examples(count, EXAMPLES)})")
    return "; ".join(changes) or "the order of the images changed"


def check_same_data(manifest: Manifest, run_dir: Path, run_name: str) -> None:
    """The run's dataset.json is written the first time; later it must describe the same data."""
    saved_path = run_dir / MANIFEST_NAME
    if not saved_path.is_file():
        write_json_atomic(saved_path, manifest.to_json())
        return
    try:
        saved = Manifest(**json.loads(saved_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        raise DataError(f"{saved_path} is unreadable; the run cannot tell whether its data changed. Start a new "
                        "run with another --run_name") from None
    changes = describe_changes(saved, manifest)
    if changes:
        raise DataError(f"the data changed since run {run_name} began: {changes}. A run finishes on the data it "
                        f"began with: put the data back as it was, or start a new run with another --run_name")
