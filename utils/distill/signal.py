"""The teacher signal: what gives a training batch its teacher logits. There are four
sources, each one small class with the same call:

    LiveTeacher        a frozen teacher run on every batch (the mixed images themselves)
    StoredViews        a fold teacher's stored views, replayed (the view cache)
    FoldViewsTeacher   the final student's: each image's fold teachers' stored views, in turn
    EnsembleTeacher    the final student's without the cache: the fold teachers on every batch

The pipeline asks for "the teacher signal of this fold" (`teach_fold`) or "of the final
student" (`teach_final`) and does not know how it is made. The temperature at which
stored or averaged distributions are mixed is the distillation method's: it goes from
the configuration to the method, and from the method to the signal, never back up;
it may change epoch by epoch (--temperature_schedule), so signals ask for it by epoch.
With feature distillation (--feature_kd) every signal also gives the teacher's pooled
features (`feature_dim` numbers per image; utils/distill/features.py).
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from models.teacher import head_name
from models.weights import pooled_feature_size
from utils.data.dataset import ImageDataset, with_unlabeled
from utils.data.mixing import MixedTargets
from utils.data.splits import STUDENT_AUGMENTATION, TEACHER_AUGMENTATION, FoldData
from utils.data.transforms import seeded_augmentation
from utils.distill.features import emit_features, mix_features, split_features, wants_features
from utils.distill.methods import DistillationMethod, needs_teacher
from utils.distill.teachers import (
    TeacherKey,
    TeacherSetup,
    is_cached,
    load_teacher,
    prepare_teacher,
    teacher_cache_path,
)
from utils.distill.view_cache import features_path, prepare_views, read_stored, view_cache_path, view_count
from utils.engine.loops import EpochRecord, Teaching
from utils.engine.losses import HardLabelLoss
from utils.runtime.config import DistillSettings, TeacherSettings
from utils.runtime.errors import UserError
from utils.runtime.process import seed_everything


class FoldTeacherLoaders(Protocol):
    """The loaders of a fold that its teacher needs: its own training stream, the validation
    split, and the student's stream (whose views a view cache stores)."""
    teacher: paddle.io.DataLoader
    val: paddle.io.DataLoader
    student: paddle.io.DataLoader


Temperature = Callable[[int], float]  # the method's temperature at an epoch


class TeacherSignal(Protocol):
    """The teaching for a batch, given its (mixed) images, their dataset indices and views,
    the mixing and the epoch. `feature_dim`: the teacher features' size, None without them."""

    feature_dim: Optional[int]

    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets, epoch: int) -> Teaching: ...


def logits_of(probs: paddle.Tensor, temperature: float) -> paddle.Tensor:
    """Logits whose softmax at `temperature` is exactly `probs`: T * log(probs). A mixture or
    mean of teacher distributions reaches the distillation loss as a live teacher's logits do."""
    return temperature * paddle.log(paddle.clip(probs, min=1e-12))


def mix_stored(stored: paddle.Tensor, targets: MixedTargets, temperature: float) -> paddle.Tensor:
    """Stored teacher logits for mixed images: the two images' distributions at `temperature`,
    mixed with the images' lambda and pairing."""
    if targets.perm is None:
        return stored
    probs = F.softmax(stored / temperature, axis=1)
    return logits_of(targets.lam * probs + (1.0 - targets.lam) * paddle.gather(probs, targets.perm), temperature)


def _teacher_features(teacher: nn.Layer, head: str) -> int:
    """Make the frozen teacher emit its pooled features (the input of its `head`) beside its
    logits; their size."""
    size = pooled_feature_size(getattr(teacher, head))
    emit_features(teacher, head)
    return size


def _stored(array: np.ndarray, views: np.ndarray, indices: np.ndarray) -> paddle.Tensor:
    return paddle.to_tensor(array[views, indices].astype(np.float32))


class LiveTeacher:
    """A frozen teacher run on every batch: it labels exactly the (mixed) images the student
    sees. With `features_from` (its head's name), it also gives their pooled features from the
    same forward pass."""

    def __init__(self, model: nn.Layer, num_classes: int = 0, features_from: Optional[str] = None) -> None:
        self.model, self.num_classes = model, num_classes
        self.feature_dim = _teacher_features(model, features_from) if features_from else None

    @paddle.no_grad()
    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets, epoch: int) -> Teaching:
        output = self.model(images)
        if self.feature_dim is None:
            return Teaching(output)
        return Teaching(*split_features(output, self.num_classes))


class StoredViews:
    """A fold teacher's logits (and features) replayed from the view cache, mixed as the images were."""

    def __init__(self, logits: np.ndarray, temperature: Temperature, features: Optional[np.ndarray] = None) -> None:
        self.logits = logits  # (views, images, classes), float16, perhaps memory-mapped
        self.features = features  # (views, images, channels), float16, or None
        self.temperature = temperature
        self.feature_dim = None if features is None else features.shape[-1]

    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets, epoch: int) -> Teaching:
        views, indices = views.numpy(), indices.numpy()
        logits = mix_stored(_stored(self.logits, views, indices), targets, self.temperature(epoch))
        if self.features is None:
            return Teaching(logits)
        return Teaching(logits, mix_features(_stored(self.features, views, indices), targets))


class FoldViews(ImageDataset):
    """Every image, shown at epoch e as a view that one of its fold teachers labelled: the
    folds that trained on the image take turns epoch by epoch, and their views cycle. An
    item's index is its place in that fold's training split, and its view encodes the fold
    (fold * views + view), which is how FoldViewsTeacher finds the stored logits."""

    def __init__(self, images: Sequence[np.ndarray], labels: np.ndarray, transform: Callable, seed: int,
                 folds: Sequence[FoldData], views: int, unlabeled: int = 0) -> None:
        super().__init__(images, labels, transform)
        self.base_seed, self.stored_views = seed, views
        self.sources: list[list[tuple[int, int]]] = [[] for _ in range(len(images))]
        labelled = len(images) - unlabeled  # the last `unlabeled` images follow each fold's training split
        for fold in folds:
            for local, image in enumerate(fold.train_indices):
                self.sources[image].append((fold.fold, local))
            for extra in range(unlabeled):
                self.sources[labelled + extra].append((fold.fold, len(fold.train_indices) + extra))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.int64, np.int64, np.int64]:
        sources = self.sources[index]
        fold, local = sources[self.view % len(sources)]
        view = (self.view // len(sources)) % self.stored_views
        with seeded_augmentation(self.base_seed, fold, STUDENT_AUGMENTATION, view, local):
            image = self.transform(self.images[index])
        return image, self.labels[index], np.int64(local), np.int64(fold * self.stored_views + view)


class FoldViewsTeacher:
    """The stored logits (and features) of FoldViews' items, from each fold teacher's view cache."""

    def __init__(self, logits_by_fold: dict[int, np.ndarray], views: int, temperature: Temperature,
                 features_by_fold: Optional[dict[int, np.ndarray]] = None) -> None:
        self.logits_by_fold, self.views, self.temperature = logits_by_fold, views, temperature
        self.features_by_fold = features_by_fold
        self.feature_dim = next(iter(features_by_fold.values())).shape[-1] if features_by_fold else None

    def _rows(self, by_fold: dict[int, np.ndarray], indices: paddle.Tensor, views: paddle.Tensor) -> paddle.Tensor:
        rows = [by_fold[int(code) // self.views][int(code) % self.views, int(local)]
                for local, code in zip(indices.numpy(), views.numpy())]
        return paddle.to_tensor(np.stack(rows).astype(np.float32))

    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets, epoch: int) -> Teaching:
        logits = mix_stored(self._rows(self.logits_by_fold, indices, views), targets, self.temperature(epoch))
        if self.features_by_fold is None:
            return Teaching(logits)
        return Teaching(logits, mix_features(self._rows(self.features_by_fold, indices, views), targets))


class EnsembleTeacher:
    """The fold teachers on every batch: their softmaxes at the temperature, averaged, as logits
    (and, with `features_from`, their heads' name, their pooled features averaged)."""

    def __init__(self, teachers: Sequence[nn.Layer], temperature: Temperature, num_classes: int,
                 features_from: Optional[str] = None) -> None:
        self.teachers, self.temperature, self.num_classes = teachers, temperature, num_classes
        self.feature_dim = None
        if features_from:
            self.feature_dim = [_teacher_features(teacher, features_from) for teacher in teachers][0]

    @paddle.no_grad()
    def __call__(self, images: paddle.Tensor, indices: paddle.Tensor, views: paddle.Tensor,
                 targets: MixedTargets, epoch: int) -> Teaching:
        outputs = [split_features(t(images), self.num_classes) for t in self.teachers]
        temperature = self.temperature(epoch)
        probs = paddle.stack([F.softmax(logits / temperature, axis=1) for logits, _ in outputs]).mean(axis=0)
        features = paddle.stack([f for _, f in outputs]).mean(axis=0) if self.feature_dim else None
        return Teaching(logits_of(probs, temperature), features)


def replays_views(distill: DistillSettings, teacher: TeacherSettings) -> bool:
    """Whether the students replay the teachers' stored views (the view cache)."""
    return needs_teacher(distill.kd) and teacher.teacher_cache == "views"


def stored_views(setup: TeacherSetup) -> int:
    """The views stored per image (for the folds' students' epochs)."""
    return view_count(setup.teacher, setup.optim.epochs)


def pending_teacher_work(setup: TeacherSetup, teacher_key: TeacherKey, fold: FoldData) -> tuple[bool, bool]:
    """(the fold's teacher still to train, its views still to label)."""
    cache_path = teacher_cache_path(setup, teacher_key, fold)
    cached = is_cached(cache_path) and not setup.teacher.retrain_teacher
    views_stored = cached and view_cache_path(cache_path, stored_views(setup), teacher_key.unlabeled).is_file()
    return not cached, replays_views(setup.distill, setup.teacher) and not views_stored


def teach_fold(setup: TeacherSetup, method: DistillationMethod, fold: FoldData, teacher_key: TeacherKey,
               hard_loss: HardLabelLoss, loaders: FoldTeacherLoaders, device: str,
               on_epoch: Callable[[EpochRecord, bool], None]) -> tuple[TeacherSignal, float]:
    """The fold's teacher signal for the student's training set, and its teacher's validation
    accuracy. The teacher comes from the cache or is trained now (its epochs go to `on_epoch`);
    the student then learns from it on every batch, or from its stored views."""
    seed = setup.data.seed
    seed_everything(seed + fold.fold)
    cache_path = teacher_cache_path(setup, teacher_key, fold)
    teacher = prepare_teacher(setup, teacher_key.num_classes, hard_loss, cache_path, loaders.teacher, loaders.val,
                              (seed, fold.fold, TEACHER_AUGMENTATION), on_epoch)
    source = "cached" if teacher.from_cache else "trained"
    print(f"fold {fold.fold} teacher ({source}, {cache_path.name}): val acc {teacher.val_acc:.4f}", flush=True)
    features_from = head_name(setup.teacher.teacher) if wants_features(setup.distill) else None
    if not replays_views(setup.distill, setup.teacher):
        return LiveTeacher(teacher.model, teacher_key.num_classes, features_from), teacher.val_acc
    train_set = loaders.student.dataset
    feature_dim = _teacher_features(teacher.model, features_from) if features_from else None
    views = prepare_views(setup.teacher, stored_views(setup), teacher.model, not teacher.from_cache, train_set,
                          cache_path, teacher_key.num_classes, setup.data.img_size, device, feature_dim,
                          teacher_key.unlabeled)
    what = "reused" if views.from_cache else f"labelled {views.logits.shape[0]} views of {len(train_set)} images"
    print(f"fold {fold.fold} teacher views ({views.path.name}): {what} in {views.seconds:.1f}s", flush=True)
    return StoredViews(views.logits, method.temperature_at, views.features), teacher.val_acc


def teach_final(setup: TeacherSetup, method: DistillationMethod, folds: Sequence[FoldData], teacher_key: TeacherKey,
                images: Sequence[np.ndarray], transform: Callable, seed: Sequence[int],
                unlabeled: Sequence[np.ndarray] = ()) -> tuple[ImageDataset, Optional[TeacherSignal]]:
    """The final student's training images (every labelled one, then the `unlabeled` ones) and
    teacher signal (None for a method without a teacher): the fold teachers' stored views in turn
    when every fold has them, otherwise the fold teachers' ensemble on every batch."""
    if not method.needs_teacher:
        return ImageDataset(images, teacher_key.labels, transform, seed), None
    images, labels = with_unlabeled(images, teacher_key.labels, unlabeled)
    teacher_paths = [teacher_cache_path(setup, teacher_key, fold) for fold in folds]
    missing = [str(path) for path in teacher_paths if not path.is_file()]
    if missing:
        raise UserError(f"the final student needs the fold teachers, but {missing[0]} is gone; run again with "
                        "--final_model false, or with the same settings to train the teachers again")
    views, features = stored_views(setup), wants_features(setup.distill)
    stored = [view_cache_path(path, views, teacher_key.unlabeled) for path in teacher_paths]
    if replays_views(setup.distill, setup.teacher):
        logits = {fold.fold: read_stored(path) for fold, path in zip(folds, stored)}
        stored_features = ({fold.fold: read_stored(features_path(path)) for fold, path in zip(folds, stored)}
                           if features else None)
        if all(value is not None for value in [*logits.values(), *(stored_features or {}).values()]):
            return (FoldViews(images, labels, transform, setup.data.seed, folds, views, len(unlabeled)),
                    FoldViewsTeacher(logits, views, method.temperature_at, stored_features))
    teachers = [load_teacher(setup, teacher_key.num_classes, path) for path in teacher_paths]
    return (ImageDataset(images, labels, transform, seed),
            EnsembleTeacher(teachers, method.temperature_at, teacher_key.num_classes,
                            head_name(setup.teacher.teacher) if features else None))
