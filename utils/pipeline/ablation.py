"""Run the pipeline once per attention x KD combination and tabulate the results.

    python -m utils.pipeline.ablation --data_dir DIR --attentions none,eca,simam,cbam,se,coord --kd on,off \\
        [any main.py option]

Each combination is an ordinary run named <ablation_name>-<attention>-kd<on|off>; they share the
cached per-fold teachers. A combination whose summary.json exists is not run again, so an
interrupted ablation continues where it stopped. Writes ablation.md and ablation.csv to
<output_dir>/<ablation_name>/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.runtime.process import prepare_process

prepare_process()  # must run before anything imports Paddle

from utils.distill.methods import METHOD_SETTINGS  # noqa: E402
from utils.runtime.config import Config, add_config_flags  # noqa: E402
from utils.runtime.errors import UserError, reports_user_errors  # noqa: E402
from utils.runtime.files import write_csv_atomic, write_text_atomic  # noqa: E402

KD_CHOICES = {"on": "kl", "off": "none"}
COLUMNS = ["student", "attention", "kd", "acc_mean", "acc_std", "macro_f1", "params_m", "flops_g", "latency_ms"]


def combination_config(base: Config, ablation_name: str, attention: str, kd: str) -> Config:
    return base.replace(attention=attention, kd=KD_CHOICES[kd],
                               run_name=f"{ablation_name}-{attention}-kd{kd}")


def run_ablation(base: Config, ablation_name: str, attentions: list[str], kds: list[str]) -> list[dict]:
    from models.student import build_student
    from models.teacher import build_teacher
    from utils.pipeline.cross_validation import run_cross_validation
    from utils.reporting.complexity import count_flops, count_parameters, measure_speed

    rows, teacher_accs = [], []
    for attention in attentions:
        for kd in kds:
            cfg = combination_config(base, ablation_name, attention, kd)
            summary_path = Path(cfg.outputs.output_dir) / cfg.outputs.run_name / "summary.json"
            if summary_path.is_file():
                print(f"ablation: {cfg.outputs.run_name} already finished, reusing its summary", flush=True)
            else:
                print(f"ablation: running {cfg.outputs.run_name}", flush=True)
                run_cross_validation(cfg)
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if summary["teacher_val_acc_mean"] is not None:
                teacher_accs.append(summary["teacher_val_acc_mean"])
            model = build_student(cfg.student.student, len(summary["classes"]), "none", attention=attention,
                                  attention_blocks=cfg.student.attention_blocks, width=cfg.student.student_width)
            rows.append({
                "student": cfg.student.student, "attention": attention, "kd": kd,
                "acc_mean": summary["student_val_acc_mean"], "acc_std": summary["student_val_acc_std"],
                "macro_f1": summary["student_val_macro_f1_mean"],
                "params_m": count_parameters(model) / 1e6, "flops_g": count_flops(model, cfg.data.img_size) / 1e9,
                "latency_ms": measure_speed(model, cfg.data.img_size)[0],
            })
    if teacher_accs:
        teacher, _ = build_teacher(len(summary["classes"]), "none")
        rows.append({
            "student": "resnet50 (teacher)", "attention": "-", "kd": "-",
            "acc_mean": sum(teacher_accs) / len(teacher_accs), "acc_std": float("nan"), "macro_f1": float("nan"),
            "params_m": count_parameters(teacher) / 1e6, "flops_g": count_flops(teacher, base.data.img_size) / 1e9,
            "latency_ms": measure_speed(teacher, base.data.img_size)[0],
        })
    return rows


def write_tables(rows: list[dict], out_dir: Path, base: Config) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out_dir / "ablation.csv", COLUMNS, [[row[key] for key in COLUMNS] for row in rows])
    lines = [
        f"Ablation on {base.data.data_dir}: {base.data.num_folds}-fold CV, {base.data.img_size} px, "
        f"{base.optim.epochs} epochs, seed {base.data.seed}. Accuracy: mean ± std over folds of the best-epoch "
        "validation accuracy; the teacher row gives the mean validation accuracy of the per-fold teachers. "
        "FLOPs are multiply-accumulates; latency is batch 1 on this CPU, dynamic graph.",
        "",
        "| student | attention | KD | accuracy | macro-F1 | params (M) | FLOPs (G) | latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['acc_mean']:.4f}" + (f" ± {r['acc_std']:.4f}" if r["acc_std"] == r["acc_std"] else "")
        f1 = f"{r['macro_f1']:.4f}" if r["macro_f1"] == r["macro_f1"] else "-"
        lines.append(f"| {r['student']} | {r['attention']} | {r['kd']} | {acc} | {f1} | {r['params_m']:.2f} "
                     f"| {r['flops_g']:.3f} | {r['latency_ms']:.1f} |")
    table = "\n".join(lines) + "\n"
    write_text_atomic(out_dir / "ablation.md", table)
    return table


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", default="none,eca,simam,cbam,se,coord")
    parser.add_argument("--ablation_name", default="ablation")
    add_config_flags(parser, METHOD_SETTINGS)  # its --kd is read here as the list of KD settings to compare
    args = parser.parse_args(argv)
    kd_list, args.kd = args.kd or "on,off", None
    from models.attention import check_attention
    from utils.pipeline.demo import resolve_run_config

    attentions = [a.strip() for a in args.attentions.split(",") if a.strip()]
    kds = [k.strip() for k in kd_list.split(",") if k.strip()]
    if not attentions:
        raise UserError("--attentions needs at least one name")
    for attention in attentions:
        check_attention(attention)
    if not kds or any(k not in KD_CHOICES for k in kds):
        raise UserError("--kd takes on, off or on,off")
    base = resolve_run_config(args)
    rows = run_ablation(base, args.ablation_name, attentions, kds)
    print(write_tables(rows, Path(base.outputs.output_dir) / args.ablation_name, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
