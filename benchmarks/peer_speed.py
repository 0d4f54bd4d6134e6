"""This project's training step against PyTorch's on the same CPU, side by side.

For each model and input size, one training step (batch 32, AdamW, cross-entropy,
random inputs) is timed in PyTorch (torchvision's same architecture) and in this
project (as it trains them: the compiled depthwise convolution in the students, small
maps as one product per batch in every model, kernels/batched_conv.py), each in
its own process with one thread, in alternated rounds; the median of the rounds, in
images per second, and the ratio project / PyTorch.

    python benchmarks/peer_speed.py [--torch_python /path/to/venv/bin/python] [--rounds 3]

PyTorch is not a requirement of this project: point --torch_python at a Python that has
torch and torchvision (a separate virtualenv). Without one, the PyTorch column is
skipped with a one-line note.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name in this project, role, input size): the students at 64 and 112 px, the teachers as
# the quality benchmark and configs/cpu.yaml train them.
CASES = [
    ("mobilenet_v3_small", "student", 64),
    ("mobilenet_v3_small", "student", 112),
    ("mobilenet_v2", "student", 64),
    ("mobilenet_v2", "student", 112),
    ("resnet18", "teacher", 96),
    ("resnet50", "teacher", 64),
]
BATCH, WARMUP_STEPS, CLASSES = 32, 2, 6
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FLAGS_paddle_num_threads": "1"}


def paddle_rate(name: str, role: str, px: int, seconds: float) -> float:
    """Images per second of this project's training step."""
    sys.path.insert(0, str(ROOT))
    from utils.runtime.process import prepare_process

    prepare_process()
    import numpy as np
    import paddle
    import paddle.nn.functional as F

    from kernels.cpu_kernels import use_fast_cpu_kernels
    from models.student import build_student
    from models.teacher import build_teacher

    paddle.set_device("cpu")
    if role == "student":
        model = build_student(name, CLASSES, "none")
    else:
        model, _ = build_teacher(CLASSES, "none", name)
    use_fast_cpu_kernels(model)
    optimizer = paddle.optimizer.AdamW(parameters=model.parameters(), learning_rate=1e-3)
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.normal(size=(BATCH, 3, px, px)).astype("float32"))
    labels = paddle.to_tensor(rng.integers(0, CLASSES, BATCH))
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)

    return _timed(step, seconds)


def torch_rate(name: str, px: int, seconds: float) -> float:
    """Images per second of torchvision's model trained the same way (runs under --torch_python)."""
    import torch
    import torchvision

    torch.set_num_threads(1)
    model = getattr(torchvision.models, name)(num_classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, px, px, generator=generator)
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    model.train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        float(loss)

    return _timed(step, seconds)


def _timed(step, seconds: float) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    return BATCH * steps / (time.perf_counter() - start)


def measure(python: str, framework: str, name: str, role: str, px: int, seconds: float) -> float:
    """One round in a fresh one-thread process."""
    command = [python, str(Path(__file__).resolve()), "--worker", framework, "--name", name, "--role", role,
               "--px", str(px), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{framework} {name} {px}px failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def torch_python(requested: str | None) -> str | None:
    """A Python with torch and torchvision, or None."""
    candidates = [requested] if requested else [sys.executable, shutil.which("python3") or ""]
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import torch, torchvision"], capture_output=True, check=False)
        if probe.returncode == 0:
            return python
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch_python", help="a Python with torch and torchvision (default: this one, if it has)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per round and framework")
    parser.add_argument("--only", help="comma-separated model names to measure")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", choices=("paddle", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--px", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        rate = (paddle_rate(args.name, args.role, args.px, args.seconds) if args.worker == "paddle"
                else torch_rate(args.name, args.px, args.seconds))
        print(f"{rate:.2f}")
        return 0
    torch = torch_python(args.torch_python)
    if torch is None:
        print("note: no Python with torch and torchvision found (--torch_python); measuring this project only")
    cases = [c for c in CASES if not args.only or c[0] in args.only.split(",")]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    print(f"{time.strftime('%Y-%m-%d')}, {cpu}; one thread per process, batch {BATCH}, AdamW, random inputs; "
          f"images per second, median of {args.rounds} alternated rounds of {args.seconds:g} s")
    print("| model | px | PyTorch | this project | project / PyTorch |")
    print("|---|---|---|---|---|")
    results = []
    for name, role, px in cases:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(measure(sys.executable, "paddle", name, role, px, args.seconds))
            if torch:
                theirs.append(measure(torch, "torch", name, role, px, args.seconds))
        row = {"model": name, "role": role, "px": px, "project": statistics.median(ours),
               "pytorch": statistics.median(theirs) if theirs else None}
        results.append(row)
        ratio = f"{row['project'] / row['pytorch']:.2f}x" if row["pytorch"] else "-"
        pytorch = f"{row['pytorch']:.1f}" if row["pytorch"] else "-"
        print(f"| {name} ({role}) | {px} | {pytorch} | {row['project']:.1f} | {ratio} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
