"""Classify an image or a folder of images with trained students.

    python inference.py --image_path photo.jpg
    python inference.py --image_path dir/ --recursive --topk 3 --output preds.csv

By default the newest run in models_saved/ is used: its final model (or, for a
run without one, the ensemble of its folds). Exit status: 0 when every image was
classified, 1 when some could not be read, 2 for usage errors.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

from utils.runtime.process import prepare_process

prepare_process()  # must run before anything imports Paddle

from tqdm import tqdm  # noqa: E402

from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402
from utils.runtime.text import printable  # noqa: E402

PROGRESS_BAR_FROM = 100  # images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_path", required=True, help="an image file or a folder of images")
    parser.add_argument("--model_path", help="run directory (its final model), a model directory (fold, final or "
                                             "exported) or a .pdparams file; default: the newest run in --output_dir")
    parser.add_argument("--output_dir", default="models_saved", help="where runs are saved (default: models_saved)")
    parser.add_argument("--fold", type=int, help="use only this fold of a run")
    parser.add_argument("--ensemble", action="store_true",
                        help="use the ensemble of a run's folds rather than its final model")
    parser.add_argument("--allow_partial", action="store_true",
                        help="use the finished folds of a run that is not finished")
    parser.add_argument("--recursive", action="store_true", help="also classify images in sub-folders")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--topk", type=int, default=1, help="also show the next K-1 labels")
    parser.add_argument("--categories", help="comma-separated class names to print instead of the model's")
    parser.add_argument("--output", help="write predictions to a .csv or .json file")
    parser.add_argument("--show", action="store_true", help="write copies with label and confidence drawn on them")
    parser.add_argument("--show_dir", default="predictions_shown",
                        help="where --show writes, keeping the images' paths under --image_path (default: %(default)s)")
    parser.add_argument("--use_gpu", action="store_true", help="use the GPU when Paddle has CUDA")
    parser.add_argument("--backend", choices=("paddle", "onnxruntime", "onnxruntime-int8"), default="paddle",
                        help="for exported models: Paddle Inference, or ONNX Runtime on the model.onnx that "
                             "export.py --format onnx writes, or on its INT8 model.int8.onnx (export.py --quantize "
                             "int8) (default: %(default)s)")
    parser.add_argument("--min_confidence", type=float, default=0.0, metavar="P",
                        help="label a prediction whose top probability is below P (0 to 1) 'unsure', its top "
                             "classes still listed; the run's report.md shows accuracy and coverage at several P")
    parser.add_argument("--raw_probabilities", action="store_true",
                        help="the model's probabilities as trained, without the temperature its run fitted on the "
                             "out-of-fold predictions (calibrated probabilities are the default)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the predictions for each image and its mirror image")
    parser.add_argument("--labels_from_folders", choices=("auto", "true", "false"), default="auto",
                        help="score the predictions against the class sub-folders the images are in (accuracy, "
                             "per-class report, confusion matrix); auto: when every sub-folder is one of the model's "
                             "classes (default: %(default)s)")
    parser.add_argument("--score_dir", default="inference_scores",
                        help="where the report and confusion matrix of a labelled folder go (default: %(default)s)")
    parser.add_argument("--explain", metavar="DIR",
                        help="write Grad-CAM overlays (where the student looked) to DIR, at the images' paths")
    return parser.parse_args(argv)


def write_predictions(path: Path, predictions: list, labels: dict | None) -> None:
    """Each prediction, with the image's class folder as its true label when the images are labelled
    (the columns mean what they mean in the run's oof_predictions.csv and test_predictions.csv)."""
    from utils.runtime.files import write_csv_atomic, write_json_atomic
    from utils.runtime.layout import PREDICTED, TRUE_LABEL

    rows = [{"path": p.path, **({TRUE_LABEL: labels[p.path]} if labels else {}), PREDICTED: p.label,
             "confidence": p.confidence, "top": p.top} for p in predictions]
    if path.suffix.lower() == ".json":
        write_json_atomic(path, rows)
        return
    columns = ["path", *([TRUE_LABEL] if labels else []), PREDICTED, "confidence", "topk"]
    write_csv_atomic(path, columns, [[*[row[key] for key in columns[:-2]], f"{row['confidence']:.6f}",
                                      ";".join(f"{label}:{conf:.6f}" for label, conf in row["top"])] for row in rows])


def check_arguments(args: argparse.Namespace) -> None:
    """Every number and path, before any image is read: a mistake never costs the work."""
    if args.batch_size < 1 or args.topk < 1:
        raise UserError("--batch_size and --topk must be at least 1")
    if not 0.0 <= args.min_confidence <= 1.0:
        raise UserError(f"--min_confidence must be between 0 and 1, not {args.min_confidence}")
    if "://" in args.image_path:
        raise UserError(f"--image_path {args.image_path}: URLs are not supported; download the images first")
    if args.output:
        output = Path(args.output)
        if output.suffix.lower() not in (".csv", ".json"):
            raise UserError("--output must end in .csv or .json")
        if output.is_dir():
            raise UserError(f"--output {output} is a folder; give a file name ending in .csv or .json")
        if not output.parent.is_dir():
            raise UserError(f"--output {output}: the folder {output.parent} does not exist")
    for flag, folder in (("--show_dir", args.show_dir if args.show else None), ("--explain", args.explain)):
        if folder and Path(folder).exists() and not Path(folder).is_dir():
            raise UserError(f"{flag} {folder} is a file, not a folder")
    if args.explain and args.backend != "paddle":
        raise UserError("--explain needs the trained model itself (a run or .pdparams), not --backend onnxruntime")


def prediction_line(path: Path, prediction) -> str:
    """One console line: the path, the answer and its probability (for an unsure answer, the
    best guess in brackets), then the next classes of --topk."""
    from utils.deploy.inference import UNSURE

    best, probability = prediction.top[0]
    answer = (f"{UNSURE} ({printable(best)} {probability:.2f})" if prediction.label == UNSURE
              else f"{printable(best)}  {probability:.4f}")
    extra = "  ".join(f"{printable(label)} {conf:.4f}" for label, conf in prediction.top[1:])
    return f"{printable(path)}  {answer}" + (f"  | {extra}" if extra else "")


def planned_outputs(args: argparse.Namespace, paths: list[Path], scored: bool) -> list[tuple[str, Path]]:
    """Every file this invocation may write, with the option that decides where."""
    from utils.deploy.inference import explanation_path, shown_path
    from utils.reporting.scoring import SCORE_FILES

    root = Path(args.image_path)
    outputs = [("--output", Path(args.output))] if args.output else []
    if args.show:
        outputs += [("--show_dir", shown_path(path, Path(args.show_dir), root)) for path in paths]
    if args.explain:
        outputs += [("--explain", explanation_path(path, Path(args.explain), root)) for path in paths]
    if scored:
        outputs += [("--score_dir", Path(args.score_dir) / name) for name in SCORE_FILES]
    return outputs


def model_files(sources: list[Path]) -> list[Path]:
    """The files the models are read from: a weights file and its best.json, or an exported folder's files."""
    from utils.deploy.checkpoint import META_NAME

    files = []
    for source in sources:
        files += [p for p in source.iterdir() if p.is_file()] if source.is_dir() else [source,
                                                                                       source.with_name(META_NAME)]
    return files


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from utils.deploy.inference import (
        EnsembleClassifier,
        classify,
        explanation_problem,
        find_weights,
        list_images,
        save_annotated,
        save_explanation,
    )
    from utils.reporting.scoring import folder_labels, score
    from utils.runtime.files import refuse_overwriting_inputs
    from utils.runtime.process import select_device

    check_arguments(args)
    paths = list_images(Path(args.image_path), args.recursive)
    if not paths and not args.recursive and Path(args.image_path).is_dir():
        # A folder of class folders (a labelled test split): read them, rather than find nothing.
        paths = list_images(Path(args.image_path), recursive=True)
    if not paths:
        raise UserError(f"no images in {args.image_path}" + ("" if args.recursive else " (try --recursive)"))
    device = select_device("auto" if args.use_gpu else "cpu")
    if args.use_gpu and device != "gpu":
        print("note: this Paddle has no CUDA GPU; running on the CPU", file=sys.stderr)
    sources = find_weights(args.model_path, args.output_dir, args.fold, args.ensemble, args.allow_partial)
    classifier = EnsembleClassifier(sources, device == "gpu", args.backend, args.tta, args.raw_probabilities)
    print(f"model: {sources[0]}" if len(sources) == 1 else
          f"model: the ensemble of {len(sources)} students in {os.path.commonpath(sources)}", file=sys.stderr)
    if args.categories:
        names = [c.strip() for c in args.categories.split(",")]
        if len(names) != len(classifier.classes):
            raise UserError(f"--categories names {len(names)} classes, the model has {len(classifier.classes)}")
        classifier.classes = names
    topk = min(args.topk, len(classifier.classes))
    labels = folder_labels(Path(args.image_path), paths, classifier.classes, args.labels_from_folders)
    refuse_overwriting_inputs(planned_outputs(args, paths, labels is not None), [*paths, *model_files(sources)])
    problem = explanation_problem(classifier) if args.explain else None
    if problem:
        print(f"note: --explain writes nothing: {problem}; train at a larger --img_size to see where the model "
              "looks", file=sys.stderr)
        args.explain = None
    if labels is not None:
        print(f"labels: the class folders under {args.image_path}", file=sys.stderr)

    predictions, failed = [], []
    start = time.perf_counter()
    # A progress bar on large folders only; lines go through tqdm.write so that they do not break it.
    results = tqdm(classify(classifier, paths, args.batch_size, topk, args.min_confidence), total=len(paths),
                   unit="img", leave=False, disable=None if len(paths) > PROGRESS_BAR_FROM else True)
    for path, prediction in results:
        if isinstance(prediction, str):
            failed.append(path)
            tqdm.write(f"{path}  cannot be read: {prediction}", file=sys.stderr)
            continue
        predictions.append(prediction)
        if args.show:
            save_annotated(prediction, Path(args.show_dir), Path(args.image_path))
        if args.explain:
            save_explanation(classifier, prediction, Path(args.explain), Path(args.image_path))
        tqdm.write(prediction_line(path, prediction), file=sys.stdout)
    if args.output:
        write_predictions(Path(args.output), predictions, labels)
    counts = collections.Counter(p.label for p in predictions).most_common()
    per_image = 1000 * (time.perf_counter() - start) / max(1, len(paths))
    print(f"\n{len(predictions)} classified, {len(failed)} failed"
          + (": " + ", ".join(f"{printable(label)} {n}" for label, n in counts) if counts else "")
          + f" ({per_image:.1f} ms per image, reading included)")
    if labels is not None and predictions:
        print(score(predictions, labels, classifier.classes, Path(args.score_dir)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
