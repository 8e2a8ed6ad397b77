"""Folder runs with --jsonl: one line per image as it goes, resumed after a kill, a cut-off
last line redone, shards (--shard and torchrun's variables) that cover a folder exactly
once and merge."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from cli_run import one_line_error, run_cli
from shared_data import CROWD, WEIGHTS

from retinaface_ext.inference import runs

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared missing")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """14 small crops of the crowd photo (faces in each), in two sub-folders."""
    root = tmp_path_factory.mktemp("photos")
    crowd = cv2.imread(str(CROWD))
    for k in range(14):
        sub = root / ("a" if k % 2 else "b")
        sub.mkdir(exist_ok=True)
        y, x = 40 + 10 * (k % 5), 60 * (k % 7)
        cv2.imwrite(str(sub / f"img{k:02d}.jpg"), crowd[y : y + 240, x : x + 320])
    return root


def lines_of(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines()]


def all_images(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def detect(capsys, folder, jsonl, *extra):
    return run_cli(capsys, "detect", folder, "--weights", WEIGHTS, "--recursive", "--jsonl", jsonl, *extra)


def test_a_rerun_skips_what_is_recorded_and_a_cut_last_line_is_redone(folder, tmp_path, capsys):
    jsonl = tmp_path / "results.jsonl"
    code, out, err = detect(capsys, folder, jsonl, "--batch-size", "4")
    assert code == 0 and "0 images already done, 14 to do" in err, err
    records = lines_of(jsonl)
    assert sorted(r["image"] for r in records) == all_images(folder)
    first = records[0]
    assert {"image", "size", "mtime_ns", "width", "height", "faces"} <= set(first) and first["faces"]
    assert first["width"] == 320 and first["height"] == 240
    code, _, err = detect(capsys, folder, jsonl)
    assert code == 0 and "14 images already done, 0 to do" in err and len(lines_of(jsonl)) == 14
    # A run killed while writing its last line: the rest of the line never came.
    text = jsonl.read_text()
    whole = text.splitlines(keepends=True)
    jsonl.write_text("".join(whole[:-1]) + whole[-1][: len(whole[-1]) // 2])
    code, _, err = detect(capsys, folder, jsonl)
    assert code == 0 and "last line was cut off" in err and "13 images already done, 1 to do" in err
    assert [r["image"] for r in lines_of(jsonl)] == [r["image"] for r in records]
    # A file changed since it was recorded is done again; readers keep its last line.
    changed = folder / records[0]["image"]
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    code, _, err = detect(capsys, folder, jsonl)
    assert "13 images already done, 1 to do" in err and len(lines_of(jsonl)) == 15
    assert runs.read_results(str(jsonl))[records[0]["image"]]["mtime_ns"] == os.stat(changed).st_mtime_ns


def test_a_broken_line_before_the_last_is_refused_and_nothing_is_lost(folder, tmp_path, capsys):
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text('{"image": "x.jpg"}\nmy notes\n{"image": "y.jpg"}\n')
    before = jsonl.read_bytes()
    code, _, err = detect(capsys, folder, jsonl)
    one_line_error(code, err, f"{jsonl}:2: not a results line")
    assert jsonl.read_bytes() == before


def test_an_unreadable_image_is_recorded_and_the_others_go_on(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good.jpg"), cv2.imread(str(CROWD))[:240, :320])
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    jsonl = tmp_path / "r.jsonl"
    code, _, err = detect(capsys, images, jsonl)
    assert code == 0 and "1 could not be read" in err
    records = {r["image"]: r for r in lines_of(jsonl)}
    assert "error" in records["broken.jpg"] and records["good.jpg"]["faces"]


def test_a_killed_run_resumed_does_every_image_exactly_once(folder, tmp_path):
    jsonl = tmp_path / "killed.jsonl"
    # The installed command, run from elsewhere: from the source folder, python -m would
    # import the uncompiled sources.
    script = pathlib.Path(sys.executable).parent / "retinaface"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "retinaface_ext.cli"]
    argv += ["detect", str(folder), "--weights", str(WEIGHTS), "--recursive", "--jsonl", str(jsonl)]
    argv += ["--batch-size", "1"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if jsonl.exists() and jsonl.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = jsonl.read_bytes().count(b"\n")
    assert 3 <= done < 14, f"the run was not caught in the middle; the test proves nothing: {log.read_text()}"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{done} images already done, {14 - done} to do" in result.stderr
    assert sorted(r["image"] for r in lines_of(jsonl)) == all_images(folder)


def test_shards_cover_the_folder_exactly_once_and_merge(folder, tmp_path, capsys, monkeypatch):
    jsonl = tmp_path / "sharded.jsonl"
    code, _, err = detect(capsys, folder, jsonl, "--shard", "0/3")
    assert code == 0 and "(shard 0 of 3)" in err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets them
    code, _, err = detect(capsys, folder, jsonl)
    assert code == 0 and "(shard 1 of 3)" in err
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    code, _, _ = detect(capsys, folder, jsonl, "--shard", "2/3")
    parts = runs.part_paths(str(jsonl))
    assert [os.path.basename(p) for p in parts] == [f"sharded.shard{i}of3.jsonl" for i in range(3)]
    shares = [sorted(r["image"] for r in lines_of(p)) for p in parts]
    assert all(shares) and sorted(sum(shares, [])) == all_images(folder)
    assert sorted(runs.read_results(str(jsonl))) == all_images(folder)
    code, _, err = detect(capsys, folder, jsonl)  # no shard: merge, then nothing left to do
    assert code == 0 and "merged 3 part files (14 images)" in err and "14 images already done, 0 to do" in err
    assert sorted(r["image"] for r in lines_of(jsonl)) == all_images(folder)
    assert runs.part_paths(str(jsonl)) == []


def test_shares_do_not_depend_on_the_other_files():
    names = [f"dir/img{k}.jpg" for k in range(200)]
    share = {n: runs.shard_of(n, 4) for n in names}
    assert set(share.values()) == {0, 1, 2, 3}
    assert {n: runs.shard_of(n, 4) for n in reversed(names)} == share


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_a_bad_shard_is_one_line(folder, tmp_path, capsys, text):
    code, _, err = detect(capsys, folder, tmp_path / "x.jsonl", f"--shard={text}")
    one_line_error(code, err, f"--shard {text}: expected i/N")


def test_reading_ahead_keeps_the_order_and_raises_in_turn():
    from retinaface_ext.inference.ahead import read_ahead

    def read(k):
        time.sleep(0.001 * (k % 3))
        if k == 7:
            raise ValueError("seven")
        return k * k

    got = []
    with pytest.raises(ValueError, match="seven"):
        for k, value in read_ahead(range(20), read, workers=3, ahead=4):
            got.append((k, value))
    assert got == [(k, k * k) for k in range(7)]
    assert list(read_ahead(np.arange(5), lambda k: -k, workers=2)) == [(k, -k) for k in range(5)]


# ---------------------------------------------------------------- nothing of a user's lost


@pytest.mark.parametrize(
    "content",
    [b'{"notes": "my own", "count": 3}', b'{"a":1}\n{"b":2}', b"[1, 2, 3]", b'{"image": [1, 2], "size": 3}\n'],
)
def test_jsonl_appends_only_to_a_results_file_of_ours(folder, tmp_path, capsys, content):
    """A user's JSON file (a compact json.dump has no trailing newline: once taken for a
    cut-off results line and emptied) is refused and left as it was."""
    notes = tmp_path / "notes.json"
    notes.write_bytes(content)
    code, _, err = detect(capsys, folder, notes)
    one_line_error(code, err, f"{notes}:", "not a results line of retinaface_ext")
    assert notes.read_bytes() == content


def test_a_whole_last_record_without_its_newline_is_kept(folder, tmp_path, capsys):
    jsonl = tmp_path / "r.jsonl"
    assert detect(capsys, folder, jsonl)[0] == 0
    jsonl.write_bytes(jsonl.read_bytes().rstrip(b"\n"))
    code, _, err = detect(capsys, folder, jsonl)
    assert code == 0 and "14 images already done, 0 to do" in err and len(lines_of(jsonl)) == 14


@pytest.mark.parametrize("kind", ["fifo", "device", "dangling link"])
def test_a_jsonl_target_that_is_not_a_regular_file_is_refused_before_any_work(folder, tmp_path, capsys, kind):
    """A FIFO or /dev/stdout was read whole before appending (a hang), /dev/zero read
    until memory ran out, /dev/null failed after all the work."""
    target = tmp_path / "target.jsonl"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "device":
        target = pathlib.Path("/dev/null")
    else:
        target.symlink_to(tmp_path / "missing" / "r.jsonl")
    started = time.monotonic()
    code, _, err = detect(capsys, folder, target)
    assert time.monotonic() - started < 30
    expected = {"fifo": "is a FIFO (named pipe), not a regular file", "device": "is a character device"}
    one_line_error(code, err, expected.get(kind, "a link to a missing file"))


def test_entries_that_are_not_images_become_error_lines_and_the_run_goes_on(tmp_path, capsys):
    """A dangling link stopped the whole run; a FIFO named b.jpg hung it."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good.jpg"), cv2.imread(str(CROWD))[:240, :320])
    (images / "gone.jpg").symlink_to(images / "deleted.jpg")
    os.mkfifo(images / "pipe.jpg")
    jsonl = tmp_path / "r.jsonl"
    code, _, err = detect(capsys, images, jsonl)
    assert code == 0 and "2 could not be read" in err, err
    records = {r["image"]: r for r in lines_of(jsonl)}
    assert "a link to a missing file" in records["gone.jpg"]["error"]
    assert "is a FIFO (named pipe), not a regular file" in records["pipe.jpg"]["error"]
    assert records["good.jpg"]["faces"]
    code, _, err = detect(capsys, images, jsonl)
    assert code == 0 and "to do" in err  # the rerun reads the same entries without a traceback
    code, _, err = run_cli(capsys, "detect", images / "pipe.jpg", "--weights", WEIGHTS)
    one_line_error(code, err, "pipe.jpg: neither an image file nor a folder")


def test_file_names_of_any_bytes_are_read_and_shown_escaped(tmp_path):
    """cv2.imread crashed the process on a name that is not UTF-8 (in a subprocess here,
    so that a crash fails this test alone)."""
    images = tmp_path / "images"
    images.mkdir()
    crop = cv2.imread(str(CROWD))[:240, :320]
    ok, encoded = cv2.imencode(".jpg", crop)
    name = os.path.join(os.fsencode(images), b"bad\xff.jpg")
    with open(name, "wb") as handle:
        handle.write(encoded.tobytes())
    script = f"""
import os, sys
from retinaface_ext import Detector, cli
detector = Detector({str(WEIGHTS)!r}, device="cpu")
print("faces", len(detector.detect(os.fsdecode({name!r})).above(0.5)))
sys.exit(cli.main(["detect", {str(images)!r}, "--weights", {str(WEIGHTS)!r}, "--jsonl", {str(tmp_path / "r.jsonl")!r}]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[1]) > 3
    (record,) = lines_of(tmp_path / "r.jsonl")
    assert os.fsencode(record["image"]) == b"bad\xff.jpg" and record["faces"]


@pytest.mark.parametrize(
    "rank, world, message",
    [
        ("5", "2", "RANK=5 and WORLD_SIZE=2 do not name a process"),
        ("-1", "2", "RANK='-1' is not a whole number"),
        ("one", "2", "RANK='one' is not a whole number"),
        ("0", "x", "WORLD_SIZE='x' is not a whole number"),
        ("0", "0", "RANK=0 and WORLD_SIZE=0 do not name a process"),
    ],
)
def test_torchrun_variables_are_checked_and_named(folder, tmp_path, capsys, monkeypatch, rank, world, message):
    """RANK=5 WORLD_SIZE=2 did nothing and exited 0; a word was a traceback."""
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    for extra in ([], ["--jsonl", tmp_path / "r.jsonl"]):
        code, _, err = run_cli(capsys, "detect", folder, "--weights", WEIGHTS, "--recursive", *extra)
        one_line_error(code, err, message)


def test_annotated_outputs_do_not_replace_files_without_overwrite(folder, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "img01.jpg").write_bytes(b"the user's own photo")
    code, _, err = run_cli(capsys, "detect", folder, "--weights", WEIGHTS, "--recursive", "--out", out, "--json")
    one_line_error(code, err, "img01.jpg already exists", "--overwrite")
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["img01.jpg"]
    code, _, err = run_cli(
        capsys, "detect", folder, "--weights", WEIGHTS, "--recursive", "--out", out, "--json", "--overwrite"
    )
    assert code == 0 and (out / "a" / "img01.jpg.json").exists(), err
    assert cv2.imread(str(out / "a" / "img01.jpg")) is not None


def test_images_are_read_ahead_up_to_a_number_of_bytes():
    """16 decoded images were held whatever their size (up to 400 MB each)."""
    from retinaface_ext.inference.ahead import read_ahead

    started = []

    def read(k):
        started.append(k)
        time.sleep(0.005)
        return np.zeros(1000, np.uint8)

    reads = read_ahead(range(40), read, workers=2, ahead=30, max_bytes=2500)
    next(reads)
    assert len(started) <= 1 + 3 + 2  # the one taken, three finished, two running
    assert sum(1 for _ in reads) == 39


def test_a_folder_run_from_python(folder, tmp_path):
    """The library's FolderRun, which the command calls: shards that cover the folder
    once, a rerun that skips what is recorded, an unreadable file as an item with its
    error (and a line), the faces those of Detector.detect."""
    from retinaface_ext import Detector
    from retinaface_ext.images import list_images
    from retinaface_ext.inference.folders import FolderRun

    files, root = list_images(folder, recursive=True)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a JPEG")
    detector = Detector(str(WEIGHTS), device="cpu", batch_size=3)
    results = tmp_path / "faces.jsonl"
    seen = []
    for shard in ((0, 2), (1, 2)):
        run = FolderRun.plan(files, str(root), str(results), shard)
        assert run.results == runs.part_path(str(results), shard) and run.skipped == 0
        seen += [item.path for item in run.detect(detector, threshold=0.5)]
    assert sorted(seen) == sorted(files)
    run = FolderRun.plan(files, str(root), str(results))  # merges the parts, all done
    assert run.merged == (2, 14) and run.skipped == 14 and run.files == []
    with_bad = FolderRun.plan([*files, str(bad)], str(root), str(results))
    (item,) = list(with_bad.detect(detector))
    assert item.path == str(bad) and item.faces is None and "cannot decode" in str(item.error)
    assert "error" in lines_of(results)[-1]
    plain = FolderRun.plan(files[:2], str(root))
    for item in plain.detect(detector, threshold=0.5):
        expected = detector.detect(item.path).above(0.5)
        np.testing.assert_allclose(item.faces.boxes.numpy(), expected.boxes.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="cannot decode"):  # without a results file it stops the run
        list(FolderRun.plan([str(bad)], str(tmp_path)).detect(detector))
