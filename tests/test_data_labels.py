"""Annotation files: the RetinaFace label.txt and the official WIDER FACE bbx_gt format,
and WiderFaceDataset on top of them."""

import os
import warnings

import cv2
import numpy as np
import pytest

from retinaface_ext.data import LabelFileError, WiderFaceDataset, read_annotations

FACE = (
    "449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.174 425.893 0.0 "
    "538.357 431.491 0.0 0.82"
)
NO_LANDMARKS = "78 221 7 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 0.2"


def write(tmp_path, text, name="label.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def seed_rows(lines):
    """The seed's WiderFaceDetection.__getitem__ arithmetic on parsed face lines."""
    rows = []
    for line in lines:
        label = [float(x) for x in line.split()]
        row = [label[0], label[1], label[0] + label[2], label[1] + label[3]]
        row += [label[i] for i in (4, 5, 7, 8, 10, 11, 13, 14, 16, 17)]
        row.append(-1.0 if row[4] < 0 else 1.0)
        rows.append(row)
    return np.array(rows, dtype=np.float32).reshape(-1, 15)


def test_a_retinaface_label_file_reads_as_the_seed_builds_it(tmp_path):
    path = write(tmp_path, f"# 0--Parade/a.jpg\n{FACE}\n{NO_LANDMARKS}\n# 0--Parade/empty.jpg\n# b.jpg\n{FACE}  \n")
    annotations = read_annotations(path)
    assert annotations.format == "retinaface"
    assert annotations.names == ["0--Parade/a.jpg", "0--Parade/empty.jpg", "b.jpg"]
    np.testing.assert_array_equal(annotations.faces(0), seed_rows([FACE, NO_LANDMARKS]))
    assert annotations.faces(1).shape == (0, 15)  # kept: a negative image
    np.testing.assert_array_equal(annotations.faces(2), seed_rows([FACE]))
    assert annotations.faces(0)[1, 14] == -1 and annotations.faces(0)[0, 14] == 1
    assert list(annotations.lines) == [2, 3, 6]
    assert annotations.targets.dtype == np.float32


def test_box_only_and_score_less_lines_and_sized_headers(tmp_path):
    path = write(tmp_path, "# a.jpg 1024 768\n10 20 30 40\n" + " ".join(FACE.split()[:19]) + "\n")
    annotations = read_annotations(path)
    assert annotations.names == ["a.jpg"]
    np.testing.assert_array_equal(annotations.faces(0)[0], [10, 20, 40, 60] + [-1] * 11)
    np.testing.assert_array_equal(annotations.faces(0)[1], seed_rows([FACE])[0])


def test_the_official_bbx_gt_format_including_a_count_zero_image(tmp_path):
    text = (
        "0--Parade/a.jpg\n2\n78 221 7 8 2 0 0 0 0 0 \n78 238 14 17 2 0 0 0 0 0 \n"
        "0--Parade/none.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n1--Handshaking/b.jpg\n1\n5 6 0 9 0 0 0 1 0 0\n"
        "c.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n"
    )
    with pytest.warns(UserWarning, match=r"dropped 1 face"):
        annotations = read_annotations(write(tmp_path, text, "wider_face_val_bbx_gt.txt"))
    assert annotations.format == "wider_bbx_gt"
    assert annotations.names == ["0--Parade/a.jpg", "0--Parade/none.jpg", "1--Handshaking/b.jpg", "c.jpg"]
    np.testing.assert_array_equal(annotations.faces(0)[:, :4], [[78, 221, 85, 229], [78, 238, 92, 255]])
    assert (annotations.faces(0)[:, 4:] == -1).all()
    assert annotations.faces(1).shape == (0, 15) and annotations.faces(2).shape == (0, 15)
    np.testing.assert_array_equal(annotations.faces(3)[0, :4], [1, 2, 4, 6])
    assert annotations.dropped == 1


def test_the_format_comes_from_the_content_not_the_name(tmp_path):
    assert read_annotations(write(tmp_path, "a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n", "label.txt")).format == "wider_bbx_gt"
    assert read_annotations(write(tmp_path, f"# a.jpg\n{FACE}\n", "wider_face_train_bbx_gt.txt")).format == "retinaface"


@pytest.mark.parametrize(
    "text, line, message",
    [
        (f"{FACE}\n# a.jpg\n", 1, "before any '# image' line"),
        (f"# a.jpg\n{FACE}\n1 2 3\n", 3, "got 3"),
        (f"# a.jpg\n\n{FACE.replace('542.089', '5x2')}\n", 3, "'5x2' is not a number"),
        (f"# a.jpg\n{FACE.replace('542.089', 'nan')}\n", 2, "finite"),
        ("#\n1 2 3 4\n", 1, "image path"),
        (
            "a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\nb.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n",
            5,
            "announces 3 faces but 2 follow",
        ),
        ("a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n", 4, "count of a.jpg does not match"),
        ("a.jpg\nthree\n", 2, "number of faces of a.jpg"),
        ("a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 3, "announces 2 faces but 1 follow"),
        ("a.jpg\n1\n1 2 3 4 0 0\n", 3, "expected 10 numbers"),
        ("a.jpg\n", 1, "no face count"),
        ("\n\n", 1, "no annotations"),
        # Python's float() reads these, numpy's parser does not: once "could not parse" at line 2
        (f"# a.jpg\n{FACE}\n{FACE.replace('542.089', '542_089')}\n", 3, "'542_089' is not a number"),
        (f"# a.jpg\n{FACE}\n{FACE.replace('542.089', '٥٤٢')}\n", 3, "'٥٤٢' is not a number"),
        ("a.jpg\n²\n", 2, "number of faces of a.jpg"),  # once int()'s message, with no file or line
        # numbers that parse but cannot train: once a traceback from match, far from the file
        (f"# a.jpg\n{FACE}\n100 50 1e-7 20 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 -1 1\n", 3, "empty in float32"),
        ("# a.jpg\n1 2 3 4\n1e30 2 3 4\n", 3, "a coordinate beyond"),
        ("# a.jpg\n1e39 2 3 4\n", 2, "a coordinate beyond"),
        (f"# a.jpg\n{FACE.replace('488.906', '1e39')}\n", 2, "a coordinate beyond"),
        ("a.jpg\n1\n100 50 1e-7 20 0 0 0 0 0 0\n", 3, "empty in float32"),
        ("a.jpg\n1\n1 2 3 1e30 0 0 0 0 0 0\n", 3, "a coordinate beyond"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(LabelFileError, match=message) as error:
        read_annotations(path)
    assert str(error.value).startswith(f"{path}:{line}: ")


def test_non_positive_boxes_are_dropped_and_counted_once_per_file(tmp_path):
    text = f"# a.jpg\n{FACE}\n1 2 0 4\n1 2 3 -4\n# b.jpg\n5 6 7 0\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        annotations = read_annotations(write(tmp_path, text))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "dropped 3 face(s)" in messages[0] and "label.txt" in messages[0]
    assert annotations.dropped == 3
    assert len(annotations.faces(0)) == 1 and len(annotations.faces(1)) == 0
    assert list(annotations.lines) == [2]


def test_the_dataset_reads_images_lazily_and_names_a_missing_one(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "images" / "sub" / "a.png"), image)
    path = write(tmp_path, f"# sub/a.png\n{FACE}\n# missing.jpg\n# also/missing.jpg\n")
    dataset = WiderFaceDataset(path)
    assert len(dataset) == 3 and dataset.num_faces == 1
    got, target = dataset[0]
    np.testing.assert_array_equal(got, image)
    np.testing.assert_array_equal(target, seed_rows([FACE]))
    target[:] = 0  # a copy: the dataset is unchanged
    assert dataset.target(0)[0, 0] == 449
    missing = os.path.join(str(tmp_path), "images", "missing.jpg")
    with pytest.raises(FileNotFoundError, match=missing):
        dataset[1]
    with pytest.raises(FileNotFoundError) as error:
        dataset.check()
    assert "2 of the 3 images" in str(error.value) and missing in str(error.value)
    assert os.path.join(str(tmp_path), "images", "also", "missing.jpg") in str(error.value)
    with pytest.raises(IndexError):
        dataset[3]


def test_the_dataset_applies_its_transform_and_takes_another_images_folder(tmp_path):
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((8, 8, 3), np.uint8))
    dataset = WiderFaceDataset(
        write(tmp_path, f"# x.png\n{FACE}\n"),
        images_dir=tmp_path,
        transform=lambda image, target: (image.shape, len(target)),
    )
    assert dataset[0] == ((8, 8, 3), 1)
    WiderFaceDataset(write(tmp_path, f"# x.png\n{FACE}\n"), images_dir=tmp_path).check()


def test_a_wider_train_sized_file(tmp_path):
    """12,880 images and about 160k faces, the size of WIDER FACE's train label.txt (the
    benchmark times it)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12880):
        lines.append(f"# {i % 61}--Event/{i}.jpg")
        for _ in range(int(rng.integers(1, 24))):
            lines.append(FACE if rng.random() < 0.6 else NO_LANDMARKS)
    path = write(tmp_path, "\n".join(lines) + "\n")
    annotations = read_annotations(path)
    assert len(annotations) == 12880 and len(annotations.targets) == len(lines) - 12880
    assert annotations.names[-1] == "12879--Event/12879.jpg".replace("12879--", f"{12879 % 61}--")
    np.testing.assert_array_equal(annotations.faces(12879)[-1], seed_rows([lines[-1]])[0])


VALID_FILES = [
    f"# 0--Parade/a.jpg\n{FACE}\n{NO_LANDMARKS}\n\n# e.jpg\n# b.jpg 640 480\n{FACE}  \n10 20 30 40\r\n",
    "a.jpg\n2\n78 221 7 8 2 0 0 0 0 0 \n78 238 14 17 2 0 0 0 0 0 \nnone.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
    "b.jpg\n1\n5 6 0 9 0 0 0 1 0 0\nc.jpg\n0\nd.jpg\n1\n-1.5 +2 3. .5 0 0 0 0 0 0\n",
    f"# a.jpg\n{FACE.replace('449', '4.49e2')}\n",  # not a plain decimal: read line by line
    "# a.jpg\n" + "\n".join(f"{i} {i + 1}.25 {i % 7 + 1} 3" for i in range(30000)) + "\n# b.jpg\n",
]


@pytest.mark.parametrize("text", VALID_FILES)
def test_the_fast_scan_and_the_line_by_line_reader_agree(tmp_path, text, monkeypatch):
    from retinaface_ext.data import labels

    path = write(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = read_annotations(path)
        monkeypatch.setattr(labels, "scan_lines", lambda *args: None)
        slow = read_annotations(path)
    assert fast.format == slow.format and fast.names == slow.names and fast.dropped == slow.dropped
    for field in ("offsets", "targets", "lines"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(slow, field))
    assert len(fast.names) >= 1


def test_plain_decimals_parse_exactly_as_float_does():
    from retinaface_ext.data.numbers import scan_lines

    rng = np.random.default_rng(0)
    numbers = [repr(round(float(x), int(d))) for x, d in zip(rng.uniform(-1e5, 1e5, 50000), rng.integers(0, 10, 50000))]
    numbers = [n for n in numbers if "e" not in n] + ["-0.0", "+7", "007.50", ".25", "5.", "123456789012345"]
    lines = [" ".join(numbers[i : i + 17]) for i in range(0, len(numbers), 17)]
    scanned = scan_lines(("\n".join(lines) + "\n").encode())
    np.testing.assert_array_equal(scanned.values, np.array([float(n) for n in numbers]))
    assert scanned.counts[: len(lines)].tolist() == [len(line.split()) for line in lines]
    for bad in ["1-2", "1..2", "--1", "-", ".", "1234567890123456"]:
        assert scan_lines(f"3 {bad}\n".encode()) is None, bad


def test_check_lists_many_missing_images_briefly_and_missing_images_lists_all(tmp_path):
    path = write(tmp_path, "".join(f"# {i}.jpg\n" for i in range(50)))
    dataset = WiderFaceDataset(path)
    assert len(dataset.missing_images()) == 50
    with pytest.raises(
        FileNotFoundError, match=r"(?s)50 of the 50 images.*and 30 more \(missing_images\(\) lists them all\)"
    ):
        dataset.check()


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    import threading

    fifo = tmp_path / "label.txt"
    os.mkfifo(fifo)
    refused = threading.Event()

    def unblock():  # should the reader wait on the FIFO after all, end its wait: a failure, not a hang
        if not refused.wait(10):
            with open(fifo, "w"):
                pass

    threading.Thread(target=unblock, daemon=True).start()
    with pytest.raises(ValueError, match="label.txt: not a regular file"):
        read_annotations(fifo)
    refused.set()


@pytest.mark.parametrize("kind", ["numbers", "text"])
def test_one_very_long_line_costs_a_few_times_its_size(tmp_path, kind):
    """Once about 40 times the file's size (a 12 MB line took half a gigabyte)."""
    import tracemalloc

    line = " ".join(["123.456"] * 1_500_000) if kind == "numbers" else "x" * 12_000_000
    path = write(tmp_path, f"# a.jpg\n{FACE}\n{line}\n")
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        with pytest.raises(LabelFileError, match=r"label.txt:3: a line of \d+ bytes"):
            read_annotations(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * size, (peak, size)
