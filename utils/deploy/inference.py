"""Classifying images with trained students: finding the models of a run,
the fold ensemble, and batched prediction over files and folders."""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import paddle
import paddle.inference as paddle_infer
from scipy.special import softmax

from utils.data.folders import is_image_name
from utils.data.images import decoded_or_reason, read_image
from utils.data.transforms import resize_size
from utils.deploy.checkpoint import META_NAME, WEIGHTS_NAME, load_student, read_meta
from utils.deploy.explain import NoSpatialMap, ensemble_cam, explanation, grad_cam, visible_image
from utils.deploy.export import EXPORTED_PREFIX, INT8_NAME, ONNX_NAME, exported_model_file, is_exported
from utils.runtime import layout
from utils.runtime.config import read_yaml
from utils.runtime.errors import ConfigError, UserError
from utils.runtime.process import cpu_count

UNSURE = "unsure"  # the label of a prediction below --min_confidence


@dataclasses.dataclass
class Prediction:
    path: str
    label: str
    confidence: float
    top: list[tuple[str, float]]




def _run_dir(model_path: Optional[str], output_dir: str) -> Path:
    if model_path is not None:
        if "://" in model_path:
            raise UserError(f"--model_path {model_path}: URLs are not supported; download the model and pass its path")
        return Path(model_path)
    latest = layout.latest_pointer(output_dir)
    if not latest.is_file():
        raise UserError(f"no trained run in {output_dir}/ (no 'latest'); train with python main.py "
                        "or pass --model_path")
    return Path(output_dir) / latest.read_text(encoding="utf-8").strip()


def _model_in(directory: Path) -> Optional[Path]:
    """The model a directory holds: its best.pdparams, or the directory itself when exported."""
    if (directory / WEIGHTS_NAME).is_file():
        return directory / WEIGHTS_NAME
    return directory if is_exported(directory) else None


def _expected_folds(run_dir: Path) -> Optional[int]:
    """The run's fold count, from its config.yaml (None for an export.py directory, which has none)."""
    try:
        return int(read_yaml(run_dir / "config.yaml")["num_folds"])
    except (ConfigError, ValueError, TypeError, KeyError):  # none there, or not one this tool wrote
        return None


def find_weights(model_path: Optional[str], output_dir: str, fold: Optional[int] = None, ensemble: bool = False,
                 allow_partial: bool = False) -> list[Path]:
    """The models to use: .pdparams files or exported model directories.

    `model_path` is a .pdparams file, a model directory (a fold's, the final model's or
    an exported one), or a run directory (main.py's or export.py's); None is the newest
    run in output_dir. In a run directory: fold `fold`; the ensemble of its folds with
    `ensemble`; otherwise its final model, or the fold ensemble when it has none. An
    ensemble of an unfinished run is refused unless `allow_partial`.
    """
    path = _run_dir(model_path, output_dir)
    if path.is_file():
        if path.suffix != ".pdparams":
            raise UserError(f"--model_path {path}: expected a .pdparams file, a model directory or a run directory")
        single = [path]
    elif not path.is_dir():
        raise UserError(f"--model_path {path} does not exist")
    else:
        single = [model] if (model := _model_in(path)) else []
    if single:
        if fold is not None or ensemble:
            raise UserError(f"{path} is one model; --fold and --ensemble choose among the models of a run directory")
        return single
    expected = _expected_folds(path)
    # In a run of main.py a fold is finished once its result is written (its best.pdparams comes earlier);
    # an export.py directory holds only finished models.
    folds = {k: model for k, d in layout.fold_dirs(path).items()
             if (expected is None or layout.is_finished_fold(d)) and (model := _model_in(d))}
    if fold is not None:
        if fold not in folds:
            raise UserError(f"{path} has no finished fold {fold} (finished: {', '.join(map(str, folds)) or 'none'})")
        return [folds[fold]]
    final = _model_in(layout.final_dir(path))
    if final and not ensemble:
        return [final]
    if expected and len(folds) < expected and (not allow_partial or not folds):
        raise UserError(f"{path}: {len(folds)} of {expected} folds finished; finish the run with "
                        f"{layout.resume_command(path)}, or use the finished folds with --allow_partial")
    if not folds:
        raise UserError(f"no trained model in {path} (looked for {layout.FINAL_DIR}/ and fold*/ with "
                        f"{WEIGHTS_NAME} or an exported model)")
    return [folds[k] for k in sorted(folds)]


class DynamicModel:
    """A saved student run by the dynamic graph."""

    def __init__(self, weights: Path) -> None:
        self.model, self.spec, _ = load_student(weights)

    @paddle.no_grad()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.model(paddle.to_tensor(batch)).numpy()


class InferencePredictor:
    """A `paddle.jit.save`d model run by Paddle Inference: oneDNN on CPU, or the GPU."""

    def __init__(self, model_file: Path, params_file: Path, use_gpu: bool, threads: int) -> None:
        config = paddle_infer.Config(str(model_file), str(params_file))
        if use_gpu:
            config.enable_use_gpu(256, 0)
        else:
            config.disable_gpu()
            config.enable_mkldnn()
            config.set_cpu_math_library_num_threads(threads)
        config.disable_glog_info()
        self.predictor = paddle_infer.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        self.predictor.run()
        return self.output.copy_to_cpu()


class ExportedModel(InferencePredictor):
    """An export.py model directory: the predictor and its best.json."""

    def __init__(self, directory: Path, use_gpu: bool) -> None:
        self.spec = read_meta(directory / META_NAME)[0]
        super().__init__(exported_model_file(directory), directory / f"{EXPORTED_PREFIX}.pdiparams", use_gpu,
                         cpu_count())


class OnnxModel:
    """The model.onnx of an export.py directory (`--format onnx`), or its INT8 model.int8.onnx
    (`--quantize int8`), run by ONNX Runtime on the CPU."""

    def __init__(self, directory: Path, int8: bool = False) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError("--backend onnxruntime needs ONNX Runtime: pip install onnxruntime") from None
        name, how = (INT8_NAME, "--quantize int8") if int8 else (ONNX_NAME, "--format onnx")
        if not (directory / name).is_file():
            raise UserError(f"{directory} has no {name}: export it with python export.py {how}")
        self.spec = read_meta(directory / META_NAME)[0]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_count()
        options.log_severity_level = 3  # errors only, not notes on initializers it drops while optimizing
        try:
            self.session = onnxruntime.InferenceSession(str(directory / name), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # InvalidProtobuf, a graph ONNX Runtime cannot run, ...
            raise UserError(f"{directory / name} is not an ONNX model ONNX Runtime can load "
                            f"({str(error).strip().splitlines()[-1][:160]}); export it again") from None
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]


@dataclasses.dataclass
class Int8Speed:
    """The float and INT8 ONNX models of an export side by side on this CPU."""
    float_ms: float  # batch-1 latency
    int8_ms: float
    float_rate: float  # images per second at batch 32
    int8_rate: float
    agreement: float  # the share of images INT8 gives the same top class as float

    def note(self) -> str:
        """The figures, and a verdict for each way of deploying that matches them: one image at a
        time (latency) and batches (throughput)."""
        latency, throughput = self.float_ms / self.int8_ms, self.int8_rate / self.float_rate
        said = (f"INT8 on this CPU: one image at a time {self.int8_ms:.2f} ms against {self.float_ms:.2f} ms in float "
                f"({latency:.2f}x), batches of 32 {self.int8_rate:.0f} against {self.float_rate:.0f} img/s "
                f"({throughput:.2f}x); it gives float's top class to {100 * self.agreement:.1f}% of the images checked")
        faster = [use for use, ratio in (("one image at a time", latency), ("in batches", throughput)) if ratio > 1]
        if len(faster) == 2:
            return said + "\nINT8 is faster here both ways: deploy model.int8.onnx if that agreement is enough"
        if faster:
            return said + (f"\nINT8 is faster here {faster[0]} only: deploy model.int8.onnx for that use, "
                           "model.onnx otherwise")
        return said + ("\nwarning: INT8 is slower than float on this CPU both ways: deploy model.onnx here; "
                       "model.int8.onnx is a quarter of the size, for runtimes and chips built around INT8")


def int8_speed(directory: Path, images: np.ndarray, seconds: float = 0.5, rounds: int = 2,
               max_runs: int = 100) -> Int8Speed:
    """Time model.onnx and model.int8.onnx of an export on `images` (repeated to a batch of 32),
    alternated, the best of `rounds` each, each timing `seconds` or `max_runs` runs long; and how
    often they agree on `images`."""
    models = {int8: OnnxModel(directory, int8) for int8 in (False, True)}
    batches = {1: images[:1], 32: np.resize(images, (32,) + images.shape[1:])}
    best: dict[tuple[bool, int], float] = collections.defaultdict(float)
    for _ in range(rounds):
        for (int8, model), (size, batch) in itertools.product(models.items(), batches.items()):
            model.logits(batch)  # warm-up: the first run allocates
            runs, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds and runs < max_runs:
                model.logits(batch)
                runs += 1
            best[int8, size] = max(best[int8, size], size * runs / (time.perf_counter() - start))
    answers = [np.concatenate([model.logits(images[k:k + 32]).argmax(axis=1) for k in range(0, len(images), 32)])
               for model in models.values()]
    return Int8Speed(1000 / best[False, 1], 1000 / best[True, 1], best[False, 32], best[True, 32],
                     float(np.mean(answers[0] == answers[1])))


def load_model(path: Path, use_gpu: bool, backend: str = "paddle") -> DynamicModel | ExportedModel | OnnxModel:
    """A .pdparams file on the dynamic graph, or an exported directory on `backend`, checked to
    give one output per class its best.json names (an edited best.json would otherwise index
    past the outputs, or name them wrongly)."""
    if not path.is_dir():
        if backend != "paddle":
            raise UserError(f"--backend {backend} runs exported models: export {path} with python export.py "
                            "--format onnx first")
        model = DynamicModel(path)
    elif backend.startswith("onnxruntime"):
        model = OnnxModel(path, int8=backend == "onnxruntime-int8")
    else:
        model = ExportedModel(path, use_gpu)
    size = model.spec.img_size
    outputs = model.logits(np.zeros((1, 3, size, size), np.float32)).shape[-1]
    if outputs != len(model.spec.classes):
        raise UserError(f"{path}: its {META_NAME} names {len(model.spec.classes)} classes, but the model gives "
                        f"{outputs} outputs; restore the {META_NAME} the model was saved with")
    return model


class EnsembleClassifier:
    """The mean softmax of one or more students that share classes and preprocessing; with
    `tta`, of each image and its mirror image too. Each student's logits are divided by its
    spec's temperature (calibrated probabilities), unless `raw_probabilities`."""

    def __init__(self, sources: Sequence[Path], use_gpu: bool = False, backend: str = "paddle",
                 tta: bool = False, raw_probabilities: bool = False) -> None:
        self.models = [load_model(p, use_gpu, backend) for p in sources]
        self.tta, self.raw_probabilities = tta, raw_probabilities
        self.spec = self.models[0].spec
        for path, model in zip(sources, self.models):
            if (model.spec.classes, model.spec.img_size, model.spec.crop, model.spec.mean, model.spec.std) != \
                    (self.spec.classes, self.spec.img_size, self.spec.crop, self.spec.mean, self.spec.std):
                raise UserError(f"{path}: its {META_NAME} differs from the other models in classes or preprocessing")
        self.classes: list[str] = list(self.spec.classes)
        self.transform = self.spec.eval_transform()

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.transform(image) for image in images])

    def probabilities(self, images: Sequence[np.ndarray]) -> np.ndarray:
        batch = self.preprocess(images)
        views = [batch, np.ascontiguousarray(batch[..., ::-1])] if self.tta else [batch]
        return np.mean([softmax(model.logits(view) / self.temperature(model), axis=1)
                        for model in self.models for view in views], axis=0)

    def temperature(self, model: DynamicModel | ExportedModel | OnnxModel) -> float:
        return 1.0 if self.raw_probabilities else model.spec.temperature


def list_images(path: Path, recursive: bool) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"--image_path {path} " + ("is not a regular file or a folder (a device, pipe or socket)"
                                                   if path.exists() else "does not exist"))
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in path.glob(pattern)
                  if p.is_file() and is_image_name(p.name) and not p.name.startswith("."))


def save_annotated(prediction: Prediction, show_dir: Path, image_root: Path) -> Path:
    """A copy of the image with its label and confidence drawn on it, at its path under
    `image_root` inside `show_dir` (a/x.jpg and b/x.jpg stay apart), in its own format."""
    image = cv2.cvtColor(read_image(prediction.path), cv2.COLOR_RGB2BGR)
    scale = max(0.4, image.shape[1] / 500)
    text = f"{prediction.label} {prediction.confidence:.2f}"
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(image, (0, 0), (width + 8, height + 12), (0, 0, 0), -1)
    cv2.putText(image, text, (4, height + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    out = shown_path(Path(prediction.path), show_dir, image_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imencode(out.suffix, image)[1].tofile(str(out))
    return out


def shown_path(source: Path, out_dir: Path, image_root: Path) -> Path:
    """Where a copy of the image at `source` goes under `out_dir`: at its path under
    `image_root` (a/x.jpg and b/x.jpg stay apart), in its own format."""
    return out_dir / (source.relative_to(image_root) if image_root.is_dir() else Path(source.name))


def explanation_path(source: Path, explain_dir: Path, image_root: Path) -> Path:
    """Where the Grad-CAM picture of the image at `source` goes: x.jpg becomes x.cam.png, so
    that x.jpg and x.png stay apart."""
    shown = shown_path(source, explain_dir, image_root)
    return shown.with_name(f"{shown.stem}.cam.png" if shown.suffix.lower() != ".png" else f"{shown.stem}.png")


def explanation_problem(classifier: EnsembleClassifier) -> Optional[str]:
    """Why the students' Grad-CAM maps cannot show where they looked (their last maps are too
    small at this input size), or None."""
    size = classifier.spec.img_size
    try:
        for model in classifier.models:
            if isinstance(model, DynamicModel):
                grad_cam(model.model, np.zeros((3, size, size), np.float32), 0)
    except NoSpatialMap as problem:
        return str(problem)
    return None


def save_explanation(classifier: EnsembleClassifier, prediction: Prediction, explain_dir: Path,
                     image_root: Path) -> Path:
    """The image as the students saw it, beside the Grad-CAM map of the predicted class (the mean
    over the ensemble's students), enlarged and captioned. Saved as PNG at the image's path under
    `explain_dir` (explanation_path)."""
    models = [model.model for model in classifier.models if isinstance(model, DynamicModel)]
    image = classifier.preprocess([read_image(prediction.path)])[0]
    cam = ensemble_cam(models, image, classifier.classes.index(prediction.top[0][0]))  # an unsure one's best guess
    caption = f"{prediction.top[0][0]} {prediction.top[0][1]:.2f}" + (" (unsure)" if prediction.label == UNSURE else "")
    picture = explanation(visible_image(image, classifier.spec.mean, classifier.spec.std), cam, caption)
    out = explanation_path(Path(prediction.path), explain_dir, image_root)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))[1].tofile(str(out))
    return out


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def classify(classifier: EnsembleClassifier, paths: Sequence[Path], batch_size: int, topk: int,
             min_confidence: float = 0.0) -> Iterator[tuple[Path, Prediction | str]]:
    """(path, prediction) for every path, in order; for a file that cannot be read, why. A
    prediction whose top probability is below `min_confidence` is labelled UNSURE (its top
    classes still listed)."""
    max_side = resize_size(classifier.spec.img_size)
    for batch in _batches(list(paths), batch_size):
        images = [decoded_or_reason(os.fspath(p), max_side) for p in batch]
        good = [(p, image) for p, image in zip(batch, images) if not isinstance(image, str)]
        probs = classifier.probabilities([image for _, image in good]) if good else np.empty((0, 0))
        outcome: dict[Path, Prediction | str] = dict(zip(batch, images))
        for (path, _), row in zip(good, probs):
            order = np.argsort(-row)[:topk]
            top = [(classifier.classes[i], float(row[i])) for i in order]
            label = top[0][0] if top[0][1] >= min_confidence else UNSURE
            outcome[path] = Prediction(os.fspath(path), label, top[0][1], top)
        for path in batch:
            yield path, outcome[path]
