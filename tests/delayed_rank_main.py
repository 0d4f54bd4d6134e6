"""main.py with one rank held back, for the data-parallel tests (round three of reliability):

    DELAYED_RANK=0 DELAY_AT=outputs DELAY_SECONDS=5   rank 0 writes the run outputs late: the other
                                                      rank must not read them before they exist (row 3)
    DELAYED_RANK=1 DELAY_AT=barrier DELAY_SECONDS=60  rank 1 reaches the end-of-folds barrier late:
                                                      past --dist_timeout_minutes, a one-line error (row 4)

With DELAY_MARKER=path, the delayed rank creates that file as its delay begins.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import utils.pipeline.cross_validation as cross_validation  # noqa: E402
from utils.runtime.distributed import rank  # noqa: E402

DELAYED_RANK = int(os.environ.get("DELAYED_RANK", "0"))
DELAY_SECONDS = float(os.environ.get("DELAY_SECONDS", "5"))
DELAYED = {"outputs": "save_confusion_matrix", "barrier": "barrier"}[os.environ.get("DELAY_AT", "outputs")]


def delayed(function):
    def wrapper(*args, **kwargs):
        if rank() == DELAYED_RANK:
            if os.environ.get("DELAY_MARKER"):
                Path(os.environ["DELAY_MARKER"]).touch()
            time.sleep(DELAY_SECONDS)
        return function(*args, **kwargs)

    return wrapper


setattr(cross_validation, DELAYED, delayed(getattr(cross_validation, DELAYED)))

if __name__ == "__main__":
    sys.exit(main.main())
