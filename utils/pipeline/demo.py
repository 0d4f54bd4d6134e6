"""Which data and preset a run uses: class folders in data/ when no --data_dir is given, or else
the offline demo on scikit-learn's bundled handwritten digits; on a machine without a GPU, the
CPU preset unless a --config file says otherwise."""
from __future__ import annotations

import argparse
import time

from utils.data.folders import has_class_folders, write_digits_demo
from utils.distill.methods import METHOD_SETTINGS, method_settings
from utils.pipeline.cross_validation import check_components
from utils.runtime.config import CPU_PRESET, DEMO_CONFIG, PROJECT_ROOT, Config, resolve_config, resumed_config

DATA_ROOT = PROJECT_ROOT / "data"
DIGITS_DIR = DATA_ROOT / "digits"
CPU_PRESET_SUMMARY = "3 folds, 64 px, a ResNet18 teacher, a MobileNetV3-Small student, short schedules"


def runs_on_cpu(device: str) -> bool:
    """Whether a run with --device `device` trains on the CPU (no CUDA GPU, or asked to)."""
    import paddle

    return device == "cpu" or not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0)


def with_cpu_preset(args: argparse.Namespace, cfg: Config) -> Config:
    """With --preset cpu, or by default on a machine without a GPU: the CPU preset (configs/cpu.yaml)
    under --config and the flags, said in one line when it was not asked for. The full settings would
    take days on a CPU (67 h estimated for 2,500 photos at 224 px with a ResNet50 teacher)."""
    preset = args.preset or "auto"
    if preset == "full" or (preset == "auto" and not runs_on_cpu(cfg.runtime.device)):
        return cfg
    if preset == "auto":
        print(f"No GPU: training with the CPU preset {CPU_PRESET.relative_to(PROJECT_ROOT)} ({CPU_PRESET_SUMMARY}); "
              "--preset full trains with configs/default.yaml's full settings", flush=True)
    return resolve_config(args, CPU_PRESET, METHOD_SETTINGS)


def resolve_run_config(args: argparse.Namespace) -> Config:
    """The run's configuration, with its data directory, run name and every distillation
    method's settings (defaults included, as config.yaml keeps them) filled in."""
    if args.resume:
        return resumed_config(args)
    cfg = resolve_config(args, component_settings=METHOD_SETTINGS)
    if cfg.data.data_dir is not None or has_class_folders(DATA_ROOT):
        cfg = with_cpu_preset(args, cfg)
    if cfg.data.data_dir is None:
        if has_class_folders(DATA_ROOT):
            cfg = cfg.replace(data_dir=str(DATA_ROOT))
        else:
            cfg = resolve_config(args, DEMO_CONFIG, METHOD_SETTINGS).replace(data_dir=str(DIGITS_DIR))
            check_components(cfg)  # options are checked before the demo's images are written
            if not has_class_folders(DIGITS_DIR):
                write_digits_demo(DIGITS_DIR)
            print(f"No --data_dir and no class folders in {DATA_ROOT}: running the offline demo on "
                  f"scikit-learn's handwritten digits (written to {DIGITS_DIR}) with {DEMO_CONFIG.name}.")
    if cfg.outputs.run_name is None:
        cfg = cfg.replace(run_name=time.strftime("run-%Y%m%d-%H%M%S"))
    return cfg.replace(**method_settings(cfg.distill))
