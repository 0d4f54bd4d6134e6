"""Which data a run uses when no --data_dir is given: class folders in data/,
or else the offline demo on scikit-learn's bundled handwritten digits."""
from __future__ import annotations

import argparse
import time

from utils.data.folders import has_class_folders, write_digits_demo
from utils.distill.methods import METHOD_SETTINGS, method_settings
from utils.pipeline.cross_validation import check_components
from utils.runtime.config import DEMO_CONFIG, PROJECT_ROOT, Config, resolve_config, resumed_config

DATA_ROOT = PROJECT_ROOT / "data"
DIGITS_DIR = DATA_ROOT / "digits"


def resolve_run_config(args: argparse.Namespace) -> Config:
    """The run's configuration, with its data directory, run name and every distillation
    method's settings (defaults included, as config.yaml keeps them) filled in."""
    if args.resume:
        return resumed_config(args)
    cfg = resolve_config(args, component_settings=METHOD_SETTINGS)
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
