"""Images the Detector is given: files measured from their headers before they are
decoded (formats Pillow cannot measure included), PIL images of other depths, and errors
that name each image as the caller does."""

import cv2
import numpy as np
import pytest
from shared_data import CROWD, WEIGHTS

import retinaface_ext
from retinaface_ext import Detector
from retinaface_ext.ops.reference import box_iou

pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


@pytest.mark.parametrize(
    "header, declared",
    [
        (b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12000 +X 12000\n", (12000, 12000)),
        (b"#?RGBE\n\n+X 15000 -Y 9000\n", (9000, 15000)),
        (b"PF\n13000 11000\n-1\n", (11000, 13000)),
    ],
)
def test_formats_pillow_cannot_measure_are_measured_before_decoding(detector, tmp_path, monkeypatch, header, declared):
    """A Radiance HDR or PFM file named .jpg declaring 100+ MP: once decoded by OpenCV
    (2-2.7 GB) before the refusal."""
    path = tmp_path / "bomb.jpg"
    path.write_bytes(header + bytes(64))
    assert retinaface_ext.images.image_file_size(path) == declared
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("the image was decoded"))
    with pytest.raises(ValueError, match=f"{declared[0]}x{declared[1]} pixels is more than this detector takes"):
        detector.detect(str(path))
    with pytest.raises(ValueError, match=f"declares {declared[0]}x{declared[1]} pixels, more than .* .not decoded."):
        retinaface_ext.images.read_image(path)


def test_a_file_opencv_decodes_but_nobody_can_measure_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "odd.jpg"
    path.write_bytes(b"\x00 something only OpenCV reads")
    monkeypatch.setattr(cv2, "haveImageReader", lambda name: True)
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("the image was decoded"))
    with pytest.raises(ValueError, match="odd.jpg: its format does not tell its size .* not decoded"):
        retinaface_ext.images.read_image(path)


def test_sixteen_bit_pil_images_are_scaled_not_saturated(detector, crowd):
    from PIL import Image

    gray = cv2.cvtColor(crowd, cv2.COLOR_BGR2GRAY)
    expected = detector.detect(Image.fromarray(gray)).above(0.5)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # 0..65535
    assert sixteen.mode.startswith("I;16")
    found = detector.detect(sixteen).above(0.5)
    assert len(found) == len(expected) > 10
    assert float(box_iou(found.boxes, expected.boxes).diagonal().min()) > 0.95
    with pytest.raises(ValueError, match="image: a PIL image of mode 'F' .* convert it"):
        detector.detect(Image.fromarray(gray.astype(np.float32)))


def test_errors_name_images_as_the_caller_names_them(detector, tmp_path):
    wide = np.zeros((8, 10_000, 3), np.uint8)
    small = Detector(WEIGHTS, device="cpu", target_size=7000)
    with pytest.raises(ValueError, match=r"^photos/b.jpg: 7000x8750000 pixels"):
        small.detect([np.zeros((8, 8, 3), np.uint8), wide], names=["photos/a.jpg", "photos/b.jpg"])
    with pytest.raises(ValueError, match=r"^images\[1\]: 7000x8750000"):
        small.detect([np.zeros((8, 8, 3), np.uint8), wide])
    with pytest.raises(ValueError, match="names must hold one name per image"):
        detector.detect([wide, wide], names=["one"])


def test_a_pil_image_is_taken_upright_as_its_exif_orientation_says(detector, crowd, tmp_path):
    """A phone's portrait photo is stored sideways with an orientation tag: by path it was
    right (OpenCV applies the tag), as a PIL image it found 4 faces of 60."""
    from PIL import Image

    sideways = cv2.rotate(crowd, cv2.ROTATE_90_COUNTERCLOCKWISE)  # orientation 6: turn it clockwise to view
    image = Image.fromarray(cv2.cvtColor(sideways, cv2.COLOR_BGR2RGB))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    image.save(path, exif=exif, quality=95)
    by_path = detector.detect(str(path)).above(0.5)
    with Image.open(path) as opened:
        by_pil = detector.detect(opened).above(0.5)
        assert opened.size == (crowd.shape[0], crowd.shape[1])  # stored sideways
    upright = detector.detect(crowd).above(0.5)
    assert len(by_pil) == len(by_path) and len(by_pil) >= len(upright) - 2 > 15
    assert float(box_iou(by_pil.boxes, by_path.boxes).diagonal().min()) > 0.9


def test_only_regular_files_are_read(detector, tmp_path, capsys):
    """A FIFO named b.jpg hung Detector.detect and the commands (Pillow read its header
    before the is-it-a-file check)."""
    import os
    import time

    from cli_run import one_line_error, run_cli

    pipe = tmp_path / "b.jpg"
    os.mkfifo(pipe)
    started = time.monotonic()
    with pytest.raises(ValueError, match="b.jpg: is a FIFO .named pipe., not a regular file"):
        detector.detect(str(pipe))
    with pytest.raises(ValueError, match="is a FIFO"):
        retinaface_ext.images.image_file_size(pipe)
    code, _, err = run_cli(capsys, "bench", pipe, "--weights", WEIGHTS, "--runs", "1")
    one_line_error(code, err, "b.jpg: is a FIFO")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    with pytest.raises(FileNotFoundError, match="gone.jpg .a link to a missing file."):
        detector.detect(str(tmp_path / "gone.jpg"))
    assert time.monotonic() - started < 30


def test_encoded_bytes_are_decoded_as_files_are_read_with_the_same_checks(detector, tmp_path):
    """Detector.decode_image: what the Ray stage does with read_binary_files' bytes."""
    data = CROWD.read_bytes()
    assert np.array_equal(detector.decode_image(data, "crowd"), detector.read_image(CROWD))
    radiance = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 12000 +X 12000\n" + bytes(64)
    with pytest.raises(ValueError, match="^s3://b/x.hdr: 12000x12000 pixels is more than this detector takes"):
        detector.decode_image(radiance, "s3://b/x.hdr")
    with pytest.raises(ValueError, match=r"^cannot decode image: junk \(not an image format whose size"):
        detector.decode_image(b"no image here", "junk")
    with pytest.raises(ValueError, match=r"^cannot decode image: cut.jpg \(not an image format"):
        detector.decode_image(data[:200], "cut.jpg")  # its size is further in than the cut
