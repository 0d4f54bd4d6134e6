"""The teacher view cache (`--teacher_cache views`), after FKD (Shen and Xing,
ECCV 2022). Each fold's frozen teacher labels `teacher_views` augmented views
of every training image once, in large no-grad batches through Paddle
Inference, and the logits are stored as float16 beside the cached teacher.
Student training replays exactly those views (ImageDataset seeds each view's
augmentation) against the stored logits (utils/distill/signal.py): the teacher leaves the training loop,
and the student still learns from the teacher's reading of the very picture
it sees."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn as nn
from tqdm import tqdm

from utils.data.dataset import ImageDataset, make_loader
from utils.deploy.export import EXPORTED_PREFIX, exported_model_file, save_inference_model
from utils.deploy.inference import InferencePredictor
from utils.runtime.config import TeacherSettings
from utils.runtime.distributed import gather_rows, is_main, world_size
from utils.runtime.errors import ConfigError
from utils.runtime.files import scratch_dir, write_array_atomic
from utils.runtime.process import cpu_count

# Bump when the way views are drawn changes, so that no older cache is replayed against other views.
VIEW_SCHEME = 1
# Teacher batches: no gradients are kept, so they can be much larger than training batches.
LABELLING_BATCH = 128


@dataclasses.dataclass
class PreparedViews:
    logits: np.ndarray  # (views, images, classes), float16, perhaps memory-mapped
    path: Path
    from_cache: bool
    seconds: float
    features: Optional[np.ndarray] = None  # (views, images, teacher channels), float16, with --feature_kd


def view_count(teacher: TeacherSettings, epochs: int) -> int:
    """Views labelled per image: one per epoch (of `epochs`), up to teacher_views; later epochs cycle."""
    return min(teacher.teacher_views, epochs)


def view_cache_path(teacher_path: Path, views: int, unlabeled: str = "") -> Path:
    """The views' file beside the cached teacher. The teacher's key already covers
    the dataset, the fold split, the seed and the augmentation settings; this adds
    the view count, the Paddle version, whose transforms draw the views, and the
    unlabeled images labelled with them (TeacherKey.unlabeled), if any."""
    extra = {"views": views, "scheme": VIEW_SCHEME, "paddle": paddle.__version__,
             **({"unlabeled": unlabeled} if unlabeled else {})}
    extra = json.dumps(extra, sort_keys=True)
    digest = hashlib.sha256(f"{teacher_path.stem}\n{extra}".encode()).hexdigest()[:12]
    return teacher_path.with_name(f"{teacher_path.stem}.views-{digest}.npy")


def features_path(views_path: Path) -> Path:
    """The teacher's pooled features for the same views (--feature_kd), beside their logits."""
    return views_path.with_name(views_path.name.replace(".views-", ".features-"))


def _fastest_forward(teacher: nn.Layer, img_size: int, device: str, workdir: Path) -> Callable:
    """The teacher as a numpy batch -> logits function: Paddle Inference with oneDNN on CPU
    (2.7x the dynamic graph at 48 px, docs/speed-on-cpu.md), the dynamic graph on a GPU, and
    wherever the exported teacher fails or disagrees with the dynamic graph on a probe batch
    (Paddle Inference's oneDNN runs no bilinear resize, which --teacher_img_size puts in front)."""
    @paddle.no_grad()
    def dynamic(batch: np.ndarray) -> np.ndarray:
        return teacher(paddle.to_tensor(batch)).numpy()

    if device == "gpu":
        return dynamic
    save_inference_model(teacher, img_size, workdir)
    # In a fold worker the other cores train other folds; data-parallel ranks share the cores.
    threads = max(1, cpu_count() // world_size()) if multiprocessing.current_process().name == "MainProcess" else 1
    exported = InferencePredictor(exported_model_file(workdir), workdir / f"{EXPORTED_PREFIX}.pdiparams",
                                  use_gpu=False, threads=threads).logits
    probe = np.random.default_rng(0).standard_normal((2, 3, img_size, img_size)).astype(np.float32)
    expected = dynamic(probe)
    try:
        agrees = np.allclose(exported(probe), expected, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
    except Exception:  # an operator Paddle Inference cannot run here
        agrees = False
    return exported if agrees else dynamic


def label_views(teacher: nn.Layer, dataset: ImageDataset, views: int, img_size: int, device: str,
                desc: str = "teacher labels views") -> np.ndarray:
    """(views, images, outputs) float16 teacher outputs for views 0..views-1 of every image: its
    logits, followed by its pooled features when it emits them (utils/distill/features.py). In a
    data-parallel job each rank labels its share and every rank gets the whole array: each view
    of an image is drawn from its own seeds, so the array is the one a single process would make."""
    loader = make_loader(dataset, LABELLING_BATCH, train=False, num_workers=0)
    indices, logits = [], []
    with scratch_dir() as workdir:
        forward = _fastest_forward(teacher, img_size, device, workdir)
        progress = tqdm(total=views * len(loader) * LABELLING_BATCH, desc=desc, leave=False, disable=None)
        for view in range(views):
            dataset.set_epoch(view)
            for images, _, batch_indices, _ in loader:
                logits.append(forward(images.numpy()).astype(np.float16))
                indices.append(view * len(dataset) + batch_indices.numpy())
                progress.update(len(batch_indices))
        progress.close()
    dataset.set_epoch(0)
    flat = np.empty((views * len(dataset), logits[0].shape[1]), np.float16)
    for part_indices, part_logits in zip(gather_rows(np.concatenate(indices)), gather_rows(np.concatenate(logits))):
        flat[part_indices] = part_logits
    return flat.reshape(views, len(dataset), -1)


def _stored_bytes(views_path: Path) -> int:
    features = features_path(views_path)
    return views_path.stat().st_size + (features.stat().st_size if features.is_file() else 0)


def _evict_least_recently_used(directory: Path, keep: Path, max_bytes: int) -> None:
    """Views (with their features) of other teachers go, oldest first, until all fit."""
    caches = sorted(directory.glob("*.views-*.npy"), key=lambda p: p.stat().st_mtime)
    total = sum(_stored_bytes(p) for p in caches)
    for path in caches:
        if total <= max_bytes:
            break
        if path != keep:
            total -= _stored_bytes(path)
            path.unlink(missing_ok=True)
            features_path(path).unlink(missing_ok=True)


def read_stored(path: Path) -> Optional[np.ndarray]:
    """Stored teacher outputs (memory-mapped), or None when there are none. A damaged file (cut
    short, overwritten) is said in one line and counts as missing, so that it is made again."""
    if not path.is_file():
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as error:
        print(f"the stored teacher outputs {path.name} are damaged ({type(error).__name__}): not used", flush=True)
        return None


def _load_stored(path: Path, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    stored = read_stored(path)
    return stored if stored is not None and stored.shape == shape else None


def prepare_views(settings: TeacherSettings, views: int, teacher: nn.Layer, teacher_is_new: bool,
                  dataset: ImageDataset, teacher_path: Path, num_classes: int, img_size: int, device: str,
                  feature_dim: Optional[int] = None, unlabeled: str = "") -> PreparedViews:
    """The fold's stored views: reused when this very teacher labelled them before,
    otherwise labelled now, written atomically and kept within teacher_cache_max_mb. With
    `feature_dim` (feature distillation), the teacher emits its pooled features beside its
    logits (utils/distill/features.py), and they are stored too. `views` per image, at `img_size`;
    `unlabeled`: the key of the unlabeled images among `dataset`'s (TeacherKey.unlabeled)."""
    start = time.perf_counter()
    path = view_cache_path(teacher_path, views, unlabeled)
    if not teacher_is_new:
        logits = _load_stored(path, (views, len(dataset), num_classes))
        features = feature_dim and _load_stored(features_path(path), (views, len(dataset), feature_dim))
        if logits is not None and (feature_dim is None or features is not None):
            os.utime(path)  # recently used: the last to be evicted
            return PreparedViews(logits, path, True, time.perf_counter() - start, features)
    needed_mb = views * len(dataset) * (num_classes + (feature_dim or 0)) * 2 / 2**20
    bound_mb = settings.teacher_cache_max_mb
    if needed_mb > bound_mb:
        raise ConfigError(f"{views} teacher views of {len(dataset)} images need {needed_mb:.0f} MB, more than "
                          f"teacher_cache_max_mb={bound_mb}; lower --teacher_views or raise the bound")
    outputs = label_views(teacher, dataset, views, img_size, device)
    logits, features = outputs[..., :num_classes], None
    if feature_dim:
        features = np.ascontiguousarray(outputs[..., num_classes:])
        write_array_atomic(features_path(path), features)
    write_array_atomic(path, np.ascontiguousarray(logits))  # last: the views are complete when it exists
    if is_main():
        _evict_least_recently_used(path.parent, path, bound_mb * 2**20)
    return PreparedViews(logits, path, False, time.perf_counter() - start, features)
