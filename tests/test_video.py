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


# ---------------------------------------------------------------- nothing of a user's lost


def test_files_in_out_that_the_run_did_not_write_are_not_replaced(clip, tmp_path, capsys):
    """The user's own clip.mp4 and clip.jsonl in --out were overwritten without a word."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4").write_bytes(b"the user's own video")
    (out / "clip.jsonl").write_bytes(b"the user's own notes\n")
    code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out)
    one_line_error(code, err, "clip.mp4 and 1 more output file already exist", "--overwrite")
    assert (out / "clip.mp4").read_bytes() == b"the user's own video"
    assert (out / "clip.jsonl").read_bytes() == b"the user's own notes\n"
    code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out, "--overwrite")
    assert code == 0 and len((out / "clip.jsonl").read_text().splitlines()) == FRAMES, err


def stop_at_second_call(monkeypatch, stop):
    from retinaface_ext.inference import Detector

    detect, calls = Detector.detect, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            stop()
        return detect(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "detect", stopping)


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM"])
def test_a_run_stopped_keeps_the_earlier_result_and_its_partial_one_beside_it(clip, tmp_path, capsys, monkeypatch, how):
    """A rerun stopped after 37 frames of 400 replaced the whole earlier result by the
    partial one; SIGTERM left .clip.jsonl.<pid>.tmp files."""
    import os
    import signal

    out = tmp_path / "out"
    assert run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupt():
        raise KeyboardInterrupt

    stop_at_second_call(monkeypatch, interrupt if how == "Ctrl-C" else lambda: os.kill(os.getpid(), signal.SIGTERM))
    code, _, err = run_cli(
        capsys, "detect", clip, "--weights", WEIGHTS, "--out", out, "--overwrite", "--batch-size", "2"
    )
    assert code == (130 if how == "Ctrl-C" else 143) and "the partial result is in" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4", "clip.partial.jsonl", "clip.partial.mp4"]
    partial = [json.loads(line) for line in (out / "clip.partial.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in partial] == [0, 1]
    assert cv2.VideoCapture(str(out / "clip.partial.mp4")).read()[0]


def test_what_is_a_camera_a_stream_or_a_video(tmp_path, monkeypatch):
    """A folder named 2024 (or a file named 7) was opened as a camera, a folder named
    trip.mov as a video."""
    from retinaface_ext.cli.video import video_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    (tmp_path / "7").write_bytes(b"")
    (tmp_path / "trip.mov").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"")
    expected = {"2024": None, "7": None, "trip.mov": None, "3": 3, "camera:7": 7, "clip.mp4": "clip.mp4"}
    expected.update({"missing.avi": "missing.avi", "rtsp://host/live": "rtsp://host/live", "photo.jpg": None})
    assert {text: video_source(text) for text in expected} == expected


def test_a_folder_named_like_a_year_is_a_folder_of_images(crowd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "2024").mkdir()
    cv2.imwrite(str(tmp_path / "2024" / "a.jpg"), crowd[:240, :320])
    code, out, err = run_cli(capsys, "detect", "2024", "--weights", WEIGHTS, "--json")
    assert code == 0 and json.loads(out)["faces"], err


def test_a_video_without_frames_is_named(clip, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("retinaface_ext.inference.video._frames", lambda capture: iter(()))
    code, _, err = run_cli(capsys, "detect", clip, "--weights", WEIGHTS, "--json")
    one_line_error(code, err, f"{clip}: no frame could be read")


def test_frames_too_small_for_mp4v_are_named_before_any_work(tmp_path, capsys):
    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 10, (1, 1))
    for _ in range(3):
        writer.write(np.full((1, 1, 3), 100, np.uint8))
    writer.release()
    code, _, err = run_cli(capsys, "detect", tiny, "--weights", WEIGHTS, "--out", tmp_path / "out")
    one_line_error(code, err, "tiny.avi: frames of 1x1 pixels are too small to write as an mp4v video", "--no-draw")
    code, _, err = run_cli(capsys, "detect", tiny, "--weights", WEIGHTS, "--out", tmp_path / "out", "--no-draw")
    assert code == 0 and len((tmp_path / "out" / "tiny.jsonl").read_text().splitlines()) == 3, err


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "4", True])
def test_a_bad_batch_size_is_refused_before_any_frame(clip, detector, batch_size):
    """-1, 2.5 and "4" were taken and decoded the whole video first; 0 meant the default."""
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        next(iter(detector.detect_video(str(clip), batch_size=batch_size)))


def test_frames_are_read_ahead_up_to_a_number_of_bytes():
    """64 frames were held whatever their size (80 frames of 6000x6000: 9.8 GB)."""
    import time

    from retinaface_ext.inference.ahead import produce_ahead

    made, frame_bytes = [], 1000

    def frames():
        for k in range(50):
            made.append(k)
            yield np.zeros(frame_bytes, np.uint8)

    ahead = produce_ahead(frames(), ahead=64, max_bytes=4500, size_of=lambda f: f.nbytes)
    next(ahead)
    time.sleep(0.3)  # the producer fills what the budget allows, then waits
    assert len(made) <= 1 + 4 + 1  # the frame taken, four waiting, one read and held back
    assert sum(1 for _ in ahead) == 49
