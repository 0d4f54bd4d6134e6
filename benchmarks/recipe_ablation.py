"""Which parts of a training recipe help on a few thousand photos? Starting from a plain
recipe (crops of 60-100%, flips, AdamW, label smoothing; no TrivialAugment, Mixup,
erasing or EMA), each variant changes one thing (or adds everything at once), trains a
CE-only student (or a teacher) on the same fold of a tuning split, and is compared with
the plain recipe on that fold.

    python benchmarks/recipe_ablation.py --data_dir ../shared/datasets/trashnet-112 \\
        [--seed 7] [--fold 0] [--variants plain,crop_0.25,...] [--jobs 2] [--output_dir DIR]

The tuning split (seed 7 by default) is not the quality benchmark's (seed 42), so that the
recipe is not tuned on the numbers the benchmark reports. Each variant is an ordinary
main.py run of one fold, the runs one per CPU core at a time; a variant whose fold has
finished is not run again. Prints (and writes to <output_dir>/recipe_ablation.md) the
validation accuracy of the best epoch (what the tool keeps) and of the last epoch, and
the minutes taken; --report_only prints the table of what has finished.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.runtime.process import cpu_count  # noqa: E402

# The plain recipe of issue 35: what every variant starts from.
PLAIN = {
    "img_size": 112, "epochs": 50, "batch_size": 32, "lr": 0.002, "weight_decay": 0.05, "warmup_epochs": 3,
    "patience": 50, "label_smoothing": 0.1, "crop": "random_resized", "crop_scale_min": 0.6, "hflip": 0.5,
    "auto_augment": "none", "mixup_alpha": 0, "cutmix_alpha": 0, "erasing": 0, "rotation": 0, "color_jitter": 0,
    "ema_decay": 0, "clip_grad_norm": 0,
}
STUDENT = {"student": "mobilenet_v3_small", "student_weights": "none", "kd": "none"}
# A teacher is trained by a distillation run whose student trains for one epoch only.
TEACHER = {"teacher": "resnet18", "teacher_weights": "none", "kd": "kl", "student": "mobilenet_v3_small",
           "student_weights": "none", "teacher_cache": "off"}
EVERYTHING = {"crop_scale_min": 0.25, "auto_augment": "trivialaugment", "mixup_alpha": 0.2, "erasing": 0.1,
              "ema_decay": 0.998, "clip_grad_norm": 5.0}  # the scratch recipe's additions

STUDENT_VARIANTS = {
    "plain": {},
    "crop_0.25": {"crop_scale_min": 0.25},
    "crop_0.08": {"crop_scale_min": 0.08},
    "crop_pad": {"crop": "pad"},
    "trivialaugment": {"auto_augment": "trivialaugment"},
    "randaugment": {"auto_augment": "randaugment"},
    "mixup": {"mixup_alpha": 0.2},
    "cutmix": {"cutmix_alpha": 1.0},
    "erasing": {"erasing": 0.25},
    "rotation_jitter": {"rotation": 15, "color_jitter": 0.2},
    "ema": {"ema_decay": 0.998},
    "clip": {"clip_grad_norm": 5.0},
    "no_smoothing": {"label_smoothing": 0.0},
    "everything": EVERYTHING,
    "px96": {"img_size": 96},
    "px128": {"img_size": 128},
    "px160": {"img_size": 160},
    "epochs30": {"epochs": 30},
    "epochs100": {"epochs": 100},
    "lr0.001": {"lr": 0.001},
    "lr0.004": {"lr": 0.004},
    "batch16": {"batch_size": 16},
    "batch64": {"batch_size": 64},
}
# The teacher's own: its epochs and learning rate are teacher_epochs and teacher_lr.
TEACHER_PLAIN = {"teacher_epochs": 50, "teacher_lr": 0.002, "epochs": 1}
TEACHER_VARIANTS = {
    "teacher_plain": {},
    "teacher_everything": EVERYTHING,
    "teacher_crop_0.25": {"crop_scale_min": 0.25},
    "teacher_trivialaugment": {"auto_augment": "trivialaugment"},
    "teacher_epochs30": {"teacher_epochs": 30},
    "teacher_epochs100": {"teacher_epochs": 100},
    "teacher_lr0.001": {"teacher_lr": 0.001},
    "teacher_lr0.004": {"teacher_lr": 0.004},
}
# ImageNet-pretrained EfficientNet-Lite0, fine-tuned: its epochs, learning rate and resolution.
PRETRAINED = {"teacher": "efficientnet_lite0", "teacher_weights": "imagenet", "teacher_epochs": 10,
              "teacher_lr": 0.001}
TEACHER_VARIANTS.update({
    "lite0": PRETRAINED,
    "lite0_lr0.0003": {**PRETRAINED, "teacher_lr": 0.0003},
    "lite0_epochs20": {**PRETRAINED, "teacher_epochs": 20},
    "lite0_px224": {**PRETRAINED, "teacher_img_size": 224},
    "lite0_everything": {**PRETRAINED, **EVERYTHING},
})
VARIANTS = {**STUDENT_VARIANTS, **TEACHER_VARIANTS}


def settings(variant: str) -> dict:
    """The main.py settings of `variant`: the plain recipe, the model's, then the variant's change."""
    if variant in TEACHER_VARIANTS:
        return {**PLAIN, **TEACHER, **TEACHER_PLAIN, **TEACHER_VARIANTS[variant]}
    return {**PLAIN, **STUDENT, **STUDENT_VARIANTS[variant]}


def command(args: argparse.Namespace, variant: str) -> list[str]:
    flags = [part for key, value in settings(variant).items() for part in (f"--{key}", str(value))]
    return [sys.executable, str(ROOT / "main.py"), "--data_dir", args.data_dir, "--num_folds", "3", "--folds",
            str(args.fold), "--seed", str(args.seed), "--output_dir", args.output_dir, "--log_dir",
            str(Path(args.output_dir) / "logs"), "--run_name", f"recipe-{variant}", "--parallel_folds", "1",
            "--final_model", "false", "--find_label_issues", "false", "--quiet", *flags]


def fold_dir(args: argparse.Namespace, variant: str) -> Path:
    return Path(args.output_dir) / f"recipe-{variant}" / f"fold{args.fold}"


def run(args: argparse.Namespace, variant: str) -> None:
    if (fold_dir(args, variant) / "result.json").is_file():
        return
    started = time.time()
    log = Path(args.output_dir) / f"recipe-{variant}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        code = subprocess.run(command(args, variant), stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    (Path(args.output_dir) / f"recipe-{variant}.minutes").write_text(f"{(time.time() - started) / 60:.1f}\n")
    print(f"{variant}: {'done' if code == 0 else f'failed ({code}), see {log}'}", flush=True)


def row(args: argparse.Namespace, variant: str) -> str:
    folder = fold_dir(args, variant)
    if not (folder / "result.json").is_file():
        return f"| {variant} | not run | | | |"
    result = json.loads((folder / "result.json").read_text())
    history = json.loads((folder / "history.json").read_text())
    minutes = (Path(args.output_dir) / f"recipe-{variant}.minutes").read_text().strip()
    change = ", ".join(f"{k} {v}" for k, v in VARIANTS[variant].items()) or "(the plain recipe)"
    if variant in TEACHER_VARIANTS:
        curve = history["teacher"]
        best = last = result["teacher_val_acc"]  # a teacher keeps its last epoch
    else:
        curve = history["student"]
        best, last = result["student_val_acc"], curve[-1]["val_acc"]
    return f"| {variant} | {change} | {100 * best:.1f} | {100 * last:.1f} | {len(curve)} | {minutes} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--jobs", type=int, default=cpu_count())
    parser.add_argument("--output_dir", default=str(ROOT / "models_saved" / "recipe-ablation"))
    parser.add_argument("--report_only", action="store_true", help="print the table of the finished variants")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not args.report_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda variant: run(args, variant), variants))
    table = ["| variant | change from the plain recipe | best epoch % | last epoch % | epochs | minutes |",
             "|---|---|---|---|---|---|", *(row(args, variant) for variant in variants)]
    text = (f"Tuning split: seed {args.seed}, fold {args.fold} of 3, {args.data_dir}\n\n" + "\n".join(table) + "\n")
    (Path(args.output_dir) / "recipe_ablation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
