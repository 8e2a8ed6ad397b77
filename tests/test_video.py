"""Video in and out: a short clip made here from the crowd photo (its faces moving 8 px a
frame), the annotated video and one JSON line per frame, --json on stdout,
Detector.detect_video, and one-line errors for videos that cannot be read."""

import json

import cv2
import numpy as np
import pytest
from cli_run import one_line_error, run_cli
from shared_data import WEIGHTS

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared missing")
FRAMES, FPS, SHIFT = 9, 12.5, 8
HEIGHT, WIDTH = 360, 480
TOP, LEFT = 150, 200


def frame(crowd, k):
    return np.ascontiguousarray(crowd[TOP : TOP + HEIGHT, LEFT + SHIFT * k : LEFT + SHIFT * k + WIDTH])


@pytest.fixture(scope="module")
def clip(tmp_path_factory, crowd):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for k in range(FRAMES):
        writer.write(frame(crowd, k))
    writer.release()
    return path


def centres(faces):
    return np.array([[(f["box"][0] + f["box"][2]) / 2, (f["box"][1] + f["box"][3]) / 2] for f in faces])


def test_the_annotated_video_and_a_line_per_frame(clip, crowd, detector, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out, "--batch-size", "4")
    assert code == 0, err
    video = cv2.VideoCapture(str(out / "clip.mp4"))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    decoded = 0
    while video.read()[0]:
        decoded += 1
    assert decoded == FRAMES
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([k / FPS for k in range(FRAMES)])
    # Faces are where they were drawn: the photo's faces that lie wholly inside the frame
    # are found there, and nothing is found that is not one of the photo's faces.
    photo = detector.detect(crowd).above(0.6).boxes.numpy()
    for line in lines:
        boxes = photo - [LEFT + SHIFT * line["frame"], TOP] * 2
        inside = boxes[(boxes[:, :2] >= 2).all(1) & (boxes[:, 2] <= WIDTH - 2) & (boxes[:, 3] <= HEIGHT - 2)]
        overlapping = boxes[(boxes[:, 2] > 0) & (boxes[:, 0] < WIDTH) & (boxes[:, 3] > 0) & (boxes[:, 1] < HEIGHT)]
        found = centres(line["faces"])
        assert len(inside) >= 3 and len(inside) <= len(found) <= len(overlapping), line["frame"]
        expected = (inside[:, :2] + inside[:, 2:]) / 2
        distance = np.abs(expected[:, None] - found[None]).max(-1).min(1)
        assert distance.max() < 4, (line["frame"], distance)
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4"]  # no temporary file left


def test_json_alone_streams_the_lines(clip, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [line["frame"] for line in lines] == list(range(FRAMES))
    assert all(line["faces"] for line in lines)


def test_detect_video_yields_frames_in_order_in_batches(clip, detector):
    capture = cv2.VideoCapture(str(clip))
    frames = list(detector.detect_video(capture, batch_size=4))
    assert capture.isOpened()  # a capture passed in stays open
    capture.release()
    assert [f.index for f in frames] == list(range(FRAMES))
    assert frames[3].time == pytest.approx(3 / FPS) and frames[0].image.shape == (HEIGHT, WIDTH, 3)
    one_by_one = list(detector.detect_video(str(clip), batch_size=1))
    for a, b in zip(frames, one_by_one):
        assert np.array_equal(a.image, b.image)
        assert len(a.faces) == len(b.faces) and float((a.faces.boxes - b.faces.boxes).abs().max()) < 1e-3


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 100])
def test_an_unreadable_video_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, "detect", bad, "--weights", WEIGHTS, "--out", tmp_path / "out")
    one_line_error(code, err, str(bad))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_video_options_that_do_not_apply_are_refused(clip, tmp_path, capsys):
    for extra, message in (
        ([], "a video needs --out"),
        (["--json", "--jsonl", str(tmp_path / "x.jsonl")], "--jsonl applies to folders"),
        (["--out", str(clip.parent)], "would overwrite"),
    ):
        code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, *extra)
        one_line_error(code, err, message)
    code, _, err = run_cli(capsys, "detect", tmp_path / "missing.mp4", "--weights", WEIGHTS, "--json")
    one_line_error(code, err, "missing.mp4: no such video file")


def test_an_earlier_result_stays_whole_when_a_run_fails(clip, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from retinaface_ext.inference import Detector

    def broken(self, *args, **kwargs):
        raise ValueError("the network broke")

    monkeypatch.setattr(Detector, "detect", broken)
    code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out, "--overwrite")
    one_line_error(code, err, "the network broke")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
