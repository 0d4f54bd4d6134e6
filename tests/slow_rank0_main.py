"""main.py with rank 0's run outputs held back a few seconds: the data-parallel test launches it
so that the other rank reaches the end of the run well before rank 0 has written the outputs
(round three, row 3: a rank that read them before rank 0 wrote them failed)."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import main  # noqa: E402
import utils.pipeline.cross_validation as cross_validation  # noqa: E402
from utils.runtime.distributed import rank  # noqa: E402

DELAY_SECONDS = 5
write_confusion_matrix = cross_validation.save_confusion_matrix


def slow_on_rank_0(*args, **kwargs):
    if rank() == 0:
        time.sleep(DELAY_SECONDS)
    return write_confusion_matrix(*args, **kwargs)


cross_validation.save_confusion_matrix = slow_on_rank_0

if __name__ == "__main__":
    sys.exit(main.main())
