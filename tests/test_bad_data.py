"""Every kind of bad or unusual file: read correctly, or skipped and reported; never a crash."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

import inference
import main
from tests.conftest import make_class_folders, tiny_run_args
from utils.data.folders import scan_dataset
from utils.data.images import read_image
from utils.runtime.process import MAX_IMAGE_PIXELS


@pytest.fixture
def left_red(tmp_path):
    """A 40x60 RGB array, left half red."""
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)
    return rgb


def test_unusual_but_valid_images_are_read_as_rgb(tmp_path, left_red):
    image = Image.fromarray(left_red)
    image.convert("CMYK").save(tmp_path / "cmyk.jpg")
    image.convert("P").save(tmp_path / "palette.png")
    image.convert("LA").save(tmp_path / "grey_alpha.png")
    Image.fromarray((np.arange(2400).reshape(40, 60) * 20).astype(np.uint16)).save(tmp_path / "grey16.png")
    for name in ("cmyk.jpg", "palette.png", "grey_alpha.png", "grey16.png"):
        pixels = read_image(str(tmp_path / name))
        assert pixels.shape == (40, 60, 3) and pixels.dtype == np.uint8, name
    assert read_image(str(tmp_path / "cmyk.jpg"))[0, 0].tolist() == pytest.approx([255, 0, 0], abs=3)
    assert read_image(str(tmp_path / "palette.png"))[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied(tmp_path, left_red):
    image = Image.fromarray(left_red)
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: displayed rotated 90 degrees clockwise
    image.save(tmp_path / "rotated.jpg", exif=exif)
    pixels = read_image(str(tmp_path / "rotated.jpg"))
    assert pixels.shape == (60, 40, 3)
    assert pixels[0, 20].tolist() == pytest.approx([255, 0, 0], abs=3)  # the red half is now on top


def test_broken_files_are_not_images(tmp_path, left_red):
    Image.fromarray(left_red).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture")
    (tmp_path / "png_header_only.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    for name in ("truncated.jpg", "empty.png", "text.jpg", "png_header_only.png"):
        assert read_image(str(tmp_path / name)) is None, name


def test_decompression_bomb_is_refused_and_large_images_are_shrunk(tmp_path):
    side = int(MAX_IMAGE_PIXELS**0.5) + 100
    cv2.imencode(".png", np.zeros((side, side), np.uint8))[1].tofile(str(tmp_path / "bomb.png"))
    assert read_image(str(tmp_path / "bomb.png")) is None
    cv2.imencode(".jpg", np.zeros((3000, 4000, 3), np.uint8))[1].tofile(str(tmp_path / "big.jpg"))
    assert read_image(str(tmp_path / "big.jpg"), max_short_side=256).shape == (256, 341, 3)


def test_dataset_scan_lists_clutter_drops_empty_classes_and_reads_sub_folders(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    (data / "red" / ".DS_Store").write_bytes(b"\x00\x01")
    (data / "red" / "Thumbs.db").write_bytes(b"\x00")
    (data / "green" / "notes.txt").write_text("hello")
    (data / "empty_class").mkdir()
    (data / "blue" / "more").mkdir()
    (data / "blue" / "more" / "blue_3.png").write_bytes((data / "blue" / "blue_0.png").read_bytes())
    index = scan_dataset(data)
    assert index.classes == ["blue", "green", "red"]
    assert sum(s.label == index.classes.index("blue") for s in index.samples) == 4  # sub-folders count
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in index.skipped)}
    assert reasons == {".DS_Store": "hidden or system file", "Thumbs.db": "hidden or system file",
                       "notes.txt": "not an image file"}
    assert "class folder 'empty_class' holds no images" in capsys.readouterr().out


def test_one_class_is_refused(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", per_class=3)
    for name in ("green", "blue"):
        for path in (data / name).iterdir():
            path.unlink()
    assert main.main(tiny_run_args(data, tmp_path, "one")) == 2
    assert "needs at least two class folders" in capsys.readouterr().err


def test_fuzz_random_files_never_crash_the_loader_or_inference(tmp_path, tiny_run, capsys):
    rng = np.random.default_rng(0)
    headers = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP",
               b"II*\x00", b"MM\x00*"]
    folder = tmp_path / "fuzz"
    folder.mkdir()
    for i in range(300):
        suffix = [".jpg", ".png", ".bmp", ".webp", ".tif"][i % 5]
        noise = rng.integers(0, 256, size=int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
        body = headers[i % len(headers)] + noise
        (folder / f"f{i:03d}{suffix}").write_bytes(body)
    decoded = [read_image(str(path)) for path in sorted(folder.iterdir())]
    assert all(image is None or (image.ndim == 3 and image.shape[2] == 3) for image in decoded)
    _, run_dir, _, _ = tiny_run
    output = tmp_path / "fuzz.json"
    code = inference.main(["--image_path", str(folder), "--model_path", str(run_dir), "--output", str(output)])
    captured = capsys.readouterr()
    failed = captured.err.count("cannot be read: ")
    assert code == 1 and failed + len(json.loads(output.read_text())) == 300
    assert "Traceback" not in captured.err
