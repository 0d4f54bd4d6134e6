"""The tiny run's logs, read back through VisualDL's own server on loopback."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from utils.reporting.visual_logging import HPARAM_KEYS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def visualdl_server(tiny_run):
    out = tiny_run[0]
    port = _free_port()
    # The console script pip installs beside this interpreter (VisualDL has no `python -m visualdl`).
    script = Path(sys.executable).with_name("visualdl")
    command = str(script) if script.exists() else shutil.which("visualdl")
    server = subprocess.Popen(
        # The command the tool prints, with VisualDL's own --language setting (see visualdl_command).
        [command, "--logdir", str(out / "logs"), "--host", "127.0.0.1", "--port", str(port), "--language", "en"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/app/api"
    try:
        deadline = time.time() + 60
        while True:
            try:
                _get(f"{base}/scalar/tags")
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail("the VisualDL server did not answer within 60 s")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_every_fold_shows_scalars_images_and_pr_curves(visualdl_server):
    def tags(kind: str) -> dict:
        """{"tiny/fold0": {tag, ...}, ...}: the API lists runs (as paths) and their tags side by side."""
        data = _get(f"{visualdl_server}/{kind}/tags")["data"]
        return {f"{Path(run).parent.name}/{Path(run).name}": set(names)
                for run, names in zip(data["runs"], data["tags"])}

    scalars, images, curves = tags("scalar"), tags("image"), tags("pr-curve")
    for fold in ("tiny/fold0", "tiny/fold1"):
        assert {"train/loss", "train/acc", "train/ce", "train/kl", "train/lr_x1000", "val/loss", "val/acc",
                "train/teacher_loss", "val/teacher_acc"} <= scalars[fold]
        # Grouped by split, so that VisualDL opens on train and val.
        assert {tag.split("/")[0] for tag in scalars[fold]} == {"train", "val"}
        # A CE-only teacher's loss has one part, the loss itself: no duplicate curve.
        assert {tag for tag in scalars[fold] if tag.startswith("train/teacher_")} == {
            "train/teacher_loss", "train/teacher_acc", "train/teacher_lr_x1000"}
        assert {"train/augmented_batch", "val/confusion_matrix"} <= images[fold]
        assert {"val/pr_curve/red", "val/pr_curve/green", "val/pr_curve/blue"} <= curves[fold]
    assert "val/cv_accuracy" in scalars["tiny/run"]
    assert "oof/confusion_matrix" in images["tiny/run"]


def test_hyper_parameters_and_the_web_page(visualdl_server):
    indicators = _get(f"{visualdl_server}/hparams/indicators")["data"]
    hparams = {h["name"]: h["values"] for h in indicators["hparams"]}
    assert hparams["student"] == ["mobilenet_v3_small"] and hparams["kd"] == ["kl"]
    assert "val/cv_accuracy" in {m["name"] for m in indicators["metrics"]}
    assert set(hparams) == set(HPARAM_KEYS)
    # The page answers for every browser language, and without the header.
    for headers in ({"Accept-Language": "de-DE,de;q=0.9"}, {"Accept-Language": "ja"}, {}):
        page = urllib.request.Request(visualdl_server.replace("/api", "/index"), headers=headers)
        with urllib.request.urlopen(page, timeout=5) as response:
            assert response.status == 200, headers
