"""The data-parallel jobs of tests/test_distributed.py: launching 2 gloo ranks on the CPU; the
comparison of a launched run with a single-process one, and then a job with a late rank, run in
the background from the start of the session (conftest.py), since the serial tests leave a core
idle for most of the suite."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from tests.conftest import make_class_folders, tiny_run_args

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8  # per process
# The environment as the session began: jobs start from background threads while tests set
# variables (PADDLE_PG_TIMEOUT among them), which a job must not inherit.
SESSION_ENVIRONMENT = dict(os.environ)


def settings(data: Path, out: Path, name: str, batch: int) -> list[str]:
    """A learnable tiny run: KD students (and the final one) that tell the colours apart in a few
    epochs (mild augmentation: on a few dozen steps, BatchNorm's running statistics are otherwise
    still unsettled)."""
    return tiny_run_args(data, out, name, "--recipe", "finetune", "--epochs", "16",
                         "--lr", "0.01", "--student_width", "0.5", "--teacher_cache", "views", "--img_size", "64",
                         "--teacher_views", "2", "--batch_size", str(batch), "--final_model", "true",
                         "--teacher_epochs", "4",
                         "--crop", "pad", "--mixup_alpha", "0", "--rotation", "0", "--erasing", "0", "--quiet")


def launch(args: list[str], log_dir: Path, script: Path = ROOT / "main.py", extra_env: Optional[dict] = None
           ) -> subprocess.Popen:
    """A 2-rank job; what its launcher prints goes to a file beside `log_dir` (read by output),
    so that the test may do other work while it runs without the job blocking on a full pipe."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(log_dir), str(script), *args]
    env = {key: value for key, value in {**SESSION_ENVIRONMENT, **(extra_env or {})}.items()
           if key != "CUDA_VISIBLE_DEVICES"}
    with open(printed(log_dir), "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log_dir.parent)


def printed(log_dir: Path) -> Path:
    return log_dir.parent / f"{log_dir.name}.out"


def output(job: subprocess.Popen, log_dir: Path, timeout: float) -> str:
    job.wait(timeout=timeout)
    return printed(log_dir).read_text()


class ComparisonRuns:
    """The same run launched on 2 data-parallel processes and in one process with twice the batch.
    The launched run's rank 0 writes its run outputs 31 s late (tests/delayed_rank_main.py): rank 1
    must neither read them before they exist nor give up waiting, as it did in the final student's
    first step once gloo's fixed 30 s had passed. The single-process run starts as that delay
    begins, on the cores the job's ranks then leave idle."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data = make_class_folders(out / "data", per_class=45)
        delaying = out / "rank0_delaying"
        self.job = launch(settings(self.data, out / "launched", "dp", BATCH), out / "launch_logs",
                          ROOT / "tests" / "delayed_rank_main.py",
                          {"DELAY_SECONDS": "31", "DELAY_MARKER": str(delaying)})
        self.single: Optional[subprocess.CompletedProcess] = None
        self.thread = threading.Thread(target=self._run_single, args=(delaying,), daemon=True)
        self.thread.start()

    def _run_single(self, delaying: Path) -> None:
        deadline = time.time() + 600
        while not delaying.exists() and self.job.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        self.single = subprocess.run([sys.executable, str(ROOT / "main.py"),
                                      *settings(self.data, self.out / "single", "one", 2 * BATCH)],
                                     cwd=self.out, capture_output=True, text=True, timeout=600)

    def wait(self) -> tuple[Path, Path, Path]:
        """(data, the launched run's folder, the single-process run's folder), once both finished."""
        launched = output(self.job, self.out / "launch_logs", timeout=600)
        self.thread.join(timeout=600)
        assert self.job.returncode == 0, launched[-3000:]
        assert self.single is not None and self.single.returncode == 0, self.single and self.single.stderr[-3000:]
        return self.data, self.out / "launched" / "models_saved" / "dp", self.out / "single" / "models_saved" / "one"

    def stop(self) -> None:
        if self.job.poll() is None:
            self.job.kill()


class LateRankJob:
    """Row 4 of round three: rank 1 reaches the end-of-folds barrier 20 s after rank 0, past
    --dist_timeout_minutes 0.1; launched once `after` (the comparison runs) has finished, so that
    the two jobs' ranks do not share the cores."""

    def __init__(self, out: Path, after: ComparisonRuns) -> None:
        self.out = out
        self.job: Optional[subprocess.Popen] = None
        self.thread = threading.Thread(target=self._launch_after, args=(after,), daemon=True)
        self.thread.start()

    def _launch_after(self, after: ComparisonRuns) -> None:
        after.job.wait()
        after.thread.join()
        data = make_class_folders(self.out / "data", per_class=4)
        (self.out / "logs").mkdir()
        (self.out / "arrivals").mkdir()
        args = tiny_run_args(data, self.out / "job", "late", "--kd", "none", "--quiet", "--dist_timeout_minutes", "0.1")
        self.job = launch(args, self.out / "logs", ROOT / "tests" / "delayed_rank_main.py",
                          {"DELAYED_RANK": "1", "DELAY_AT": "barrier", "DELAY_SECONDS": "20",
                           "ARRIVAL_DIR": str(self.out / "arrivals")})

    def wait(self) -> tuple[int, str]:
        """The job's exit code and what its launcher printed."""
        self.thread.join(timeout=900)
        assert self.job is not None, "the late-rank job was not launched"
        said = output(self.job, self.out / "logs", timeout=300)
        return self.job.returncode, said

    def stop(self) -> None:
        if self.job is not None and self.job.poll() is None:
            self.job.kill()


class RepeatedLaunch:
    """Row C of round four: the comparison's launched settings launched again (another run name,
    the same output folder), once the late-rank job has finished: every fold's teacher must come
    from the cache that the first job's rank 0 wrote (a late rank used to delete it)."""

    def __init__(self, out: Path, first: ComparisonRuns, after: LateRankJob) -> None:
        self.first, self.job = first, None
        self.log_dir = out / "again_logs"
        self.thread = threading.Thread(target=self._launch_after, args=(after,), daemon=True)
        self.thread.start()

    def _launch_after(self, after: LateRankJob) -> None:
        after.thread.join()
        if after.job is not None:
            after.job.wait()
        args = settings(self.first.data, self.first.out / "launched", "dp-again", BATCH)
        self.job = launch([*args, "--final_model", "false"], self.log_dir)

    def wait(self) -> tuple[int, str]:
        """The job's exit code and what its launcher printed."""
        self.thread.join(timeout=1200)
        assert self.job is not None, "the repeated job was not launched"
        said = output(self.job, self.log_dir, timeout=600)
        return self.job.returncode, said

    def stop(self) -> None:
        if self.job is not None and self.job.poll() is None:
            self.job.kill()
