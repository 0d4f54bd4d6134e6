"""Train MobileNet students by knowledge distillation from per-fold ResNet50
teachers, with stratified K-fold cross-validation.

    python main.py                          # offline demo on handwritten digits
    python main.py --data_dir path/to/classes --student mobilenet_v3_large
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from utils.runtime.process import prepare_process

prepare_process()  # must run before anything imports Paddle

from utils.distill.methods import METHOD_SETTINGS  # noqa: E402
from utils.runtime.config import add_config_flags  # noqa: E402
from utils.runtime.distributed import collective_timeout  # noqa: E402
from utils.runtime.errors import UserError, continue_with, reports_user_errors  # noqa: E402
from utils.runtime.layout import resume_command, run_dir  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every setting and its default is in configs/default.yaml.",
    )
    add_config_flags(parser, METHOD_SETTINGS)
    parser.add_argument("--report", metavar="RUN_DIR",
                        help="rebuild RUN_DIR/report.md from its saved files, without training (the label issues "
                             "and calibration too, from its out-of-fold probabilities)")
    return parser.parse_args(argv)


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        from utils.reporting.report import reanalyse, write_report

        reanalyse(Path(args.report))
        print(f"wrote {write_report(Path(args.report))}")
        return 0
    from utils.pipeline.cross_validation import run_cross_validation
    from utils.pipeline.demo import resolve_run_config

    cfg = resolve_run_config(args)
    resume = "  " + resume_command(run_dir(cfg.outputs.output_dir, cfg.outputs.run_name))
    # SIGTERM (a scheduler, `kill`) stops like Ctrl-C: finished folds and epochs are already on disk.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run_cross_validation(cfg)
    except BaseException as error:
        continue_with(error, resume)  # what Ctrl-C and a full disk print
        # A data-parallel wait that ran out of time is said in one line; anything else goes on up.
        message = collective_timeout(error) if isinstance(error, Exception) else None
        if message is None:
            raise
        raise UserError(message) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
