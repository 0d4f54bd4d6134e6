"""main.py with one rank held back, for the data-parallel tests (round three of reliability):

    DELAYED_RANK=0 DELAY_AT=outputs DELAY_SECONDS=5   rank 0 writes the run outputs late: the other
                                                      rank must not read them before they exist (row 3)
    DELAYED_RANK=1 DELAY_AT=barrier DELAY_SECONDS=60  rank 1 reaches the end-of-folds barrier late:
                                                      past --dist_timeout_minutes, a one-line error (row 4)

With DELAY_MARKER=path, the delayed rank creates that file as its delay begins. With
ARRIVAL_DIR=folder, the other ranks note there that they reached the delayed call, and the delay
begins only once they all have: on a loaded machine, a rank slower than the delay would otherwise
arrive after the "late" one.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import utils.pipeline.cross_validation as cross_validation  # noqa: E402
from utils.runtime.distributed import rank, world_size  # noqa: E402

DELAYED_RANK = int(os.environ.get("DELAYED_RANK", "0"))
DELAY_SECONDS = float(os.environ.get("DELAY_SECONDS", "5"))
DELAYED = {"outputs": "save_confusion_matrix", "barrier": "barrier"}[os.environ.get("DELAY_AT", "outputs")]


def wait_for_the_other_ranks(arrivals: Path) -> None:
    while len(list(arrivals.glob("rank*"))) < world_size() - 1:
        time.sleep(0.2)


def delayed(function):
    def wrapper(*args, **kwargs):
        arrivals = Path(os.environ["ARRIVAL_DIR"]) if os.environ.get("ARRIVAL_DIR") else None
        if rank() == DELAYED_RANK:
            if arrivals is not None:
                wait_for_the_other_ranks(arrivals)
            if os.environ.get("DELAY_MARKER"):
                Path(os.environ["DELAY_MARKER"]).touch()
            time.sleep(DELAY_SECONDS)
        elif arrivals is not None:
            (arrivals / f"rank{rank()}").touch()
        return function(*args, **kwargs)

    return wrapper


setattr(cross_validation, DELAYED, delayed(getattr(cross_validation, DELAYED)))

if __name__ == "__main__":
    sys.exit(main.main())
