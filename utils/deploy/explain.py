"""Where a student looks: Grad-CAM (Selvaraju et al., 2017) on its last convolutional
stage. The class score's gradient, averaged over the stage's positions, weighs each
channel; the weighted sum of the channels, positive part, scaled to the input and
to [0, 1], is the map, drawn over the image as the student saw it."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from models.student import feature_stages
from utils.runtime.errors import UserError

CAM_BATCH = 16  # images per forward and backward pass: a ResNet50's activations at 224 px stay under 1 GB
# A map with fewer positions per side, stretched over the image, shows its own blocks, not where the
# model looked (MobileNetV3-Small's last maps are 1x1 at 32 px): no map is drawn from it.
MIN_MAP_SIDE = 3


class NoSpatialMap(UserError):
    """The explained stage's maps are too small, at this input size, to show where a model looked."""


def grad_cams(model: nn.Layer, images: np.ndarray, class_indices: Optional[Sequence[int]] = None,
              stage: Optional[nn.Layer] = None) -> tuple[np.ndarray, list[int]]:
    """The maps (N, H, W) in [0, 1] for preprocessed images (N, 3, H, W) and the classes they
    explain (by default the predicted ones), on `stage` (by default a student's last
    convolutional stage); NoSpatialMap where that stage's maps are smaller than MIN_MAP_SIDE.
    In evaluation mode the images of a batch do not interact, so one backward pass of the summed
    class scores gives every image its own gradient."""
    model.eval()
    stage = stage or feature_stages(model)[-1]
    maps, classes = [], []
    for start in range(0, len(images), CAM_BATCH):
        chunk = images[start:start + CAM_BATCH]
        wanted = None if class_indices is None else class_indices[start:start + CAM_BATCH]
        chunk_maps, chunk_classes = _grad_cam_batch(model, chunk, wanted, stage)
        maps.append(chunk_maps)
        classes += chunk_classes
    return np.concatenate(maps), classes


def _grad_cam_batch(model: nn.Layer, images: np.ndarray, class_indices: Optional[Sequence[int]],
                    stage: nn.Layer) -> tuple[np.ndarray, list[int]]:
    captured: list[paddle.Tensor] = []
    hook = stage.register_forward_post_hook(lambda layer, inputs, output: captured.append(output))
    inputs = paddle.to_tensor(np.asarray(images, dtype=np.float32))
    inputs.stop_gradient = False  # a frozen model's activations still get their gradient
    try:
        logits = model(inputs)
    finally:
        hook.remove()
    activation = captured[0]
    height, width = activation.shape[2:]
    if min(height, width) < MIN_MAP_SIDE:
        raise NoSpatialMap(f"no spatial map at this input size: the last stage's maps are {height}x{width} at "
                           f"{inputs.shape[2]} px (at least {MIN_MAP_SIDE}x{MIN_MAP_SIDE} are needed)")
    if class_indices is None:
        class_indices = logits.numpy().argmax(axis=1).tolist()
    chosen = paddle.to_tensor(np.asarray(class_indices, dtype=np.int64))
    (gradient,) = paddle.grad(paddle.take_along_axis(logits, chosen[:, None], axis=1).sum(), [activation])
    weights = gradient.mean(axis=[2, 3], keepdim=True)
    cams = F.relu((weights * activation).sum(axis=1, keepdim=True))
    cams = F.interpolate(cams, size=list(inputs.shape[2:]), mode="bilinear", align_corners=False)[:, 0].numpy()
    low = cams.min(axis=(1, 2), keepdims=True)
    spread = cams.max(axis=(1, 2), keepdims=True) - low
    scaled = np.divide(cams - low, spread, out=np.zeros_like(cams), where=spread > 0)  # a flat map stays 0
    return scaled, [int(c) for c in class_indices]


def grad_cam(model: nn.Layer, image: np.ndarray, class_index: Optional[int] = None,
             stage: Optional[nn.Layer] = None) -> tuple[np.ndarray, int]:
    """The map (H, W) in [0, 1] for one preprocessed image (3, H, W) and the class it explains."""
    maps, classes = grad_cams(model, image[None], None if class_index is None else [class_index], stage)
    return maps[0], classes[0]


def ensemble_cam(models: Sequence[nn.Layer], image: np.ndarray, class_index: int) -> np.ndarray:
    """The mean of several students' maps for the same class."""
    return np.mean([grad_cam(model, image, class_index)[0] for model in models], axis=0)


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The Pearson correlation of two maps of the same size (0 when either is flat)."""
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / scale) if scale > 0 else 0.0


def cam_agreement(student: nn.Layer, teacher_maps: np.ndarray, teacher_classes: Sequence[int], images: np.ndarray
                  ) -> float:
    """The mean correlation of the student's Grad-CAM maps with the teacher's (`grad_cams` of the
    teacher, for the classes it predicts): the cats-vs-dogs article's measure of whether a
    student looks where its teacher looks."""
    student_maps, _ = grad_cams(student, images, teacher_classes)
    return float(np.mean([map_correlation(s, t) for s, t in zip(student_maps, teacher_maps)]))


def visible_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A preprocessed (3, H, W) image back to RGB uint8 (H, W, 3)."""
    pixels = image.transpose(1, 2, 0) * np.array(std) + np.array(mean)
    return np.clip(pixels * 255, 0, 255).astype(np.uint8)


SHOWN_SIZE = 224  # pixels: the side an explanation is shown at, however small the model's input


def overlay(rgb: np.ndarray, cam: np.ndarray, strength: float = 0.35) -> np.ndarray:
    """The map in the jet colours over the image (RGB uint8), light enough to see the image through."""
    heat = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return np.uint8((1 - strength) * rgb + strength * heat)


def upscaled(rgb: np.ndarray, side: int = SHOWN_SIZE) -> np.ndarray:
    """A small input (64 px) enlarged to be read: its short side at least `side`."""
    scale = side / min(rgb.shape[:2])
    if scale <= 1:
        return rgb
    return cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)


def explanation(rgb: np.ndarray, cam: np.ndarray, caption: str) -> np.ndarray:
    """The image beside its Grad-CAM overlay, both enlarged, with `caption` (the predicted label
    and confidence) on a bar above them (RGB uint8)."""
    image = upscaled(rgb)
    heat = cv2.resize(cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    pair = np.concatenate([image, np.full((image.shape[0], 8, 3), 255, np.uint8), overlay(image, heat)], axis=1)
    bar = np.full((32, pair.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, pair], axis=0)
