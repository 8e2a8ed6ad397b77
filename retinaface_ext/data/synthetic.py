# Over 400 lines: one drawing (faces, hair, distractors, backgrounds) that only makes sense
# whole, with one entry point, make_synthetic_faces.
"""The built-in synthetic face set: drawn faces with five landmarks, in WIDER FACE's
``label.txt`` + ``images/`` layout, so that training can be seen to work with nothing
downloaded. It is a stand-in for WIDER FACE, not a substitute: a detector trained on it
finds drawn faces, not people.

Each image is drawn with OpenCV from its own generator, seeded by (seed, split, index):
a textured, cluttered background; several faces of 10 to 300 px (skin tones, hair, eyes,
nose, mouth; in-plane rotation, some yaw, partial occlusion, blur) whose landmarks mean
what WIDER's mean (left eye, right eye, nose tip, left and right mouth corners, left and
right as seen in the image); face-like distractors that are not annotated; lighting and
noise. Some faces carry no landmarks (label -1, mostly tiny ones, as in WIDER) and a few
images have no faces. The same seed gives the same bytes (with one OpenCV build: its
drawing and JPEG encoder make the pixels).
"""

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from typing import List, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from ..files import atomic_write_bytes, atomic_write_text
from ..targets import WIDTH
from .labels import format_face_line

VERSION = 1
MANIFEST = "synthetic.json"
SPLITS = ("train", "val")
MIN_FACE, MAX_FACE = 10, 300
JPEG_QUALITY = 90
_SHIFT = 4  # drawing coordinates in 1/16 pixel
_ONE = 1 << _SHIFT
SKIN_TONES_BGR = np.array(
    [
        [189, 224, 255],
        [160, 200, 241],
        [141, 185, 234],
        [125, 172, 224],
        [103, 150, 198],
        [84, 129, 180],
        [66, 105, 156],
        [52, 86, 128],
        [40, 66, 100],
        [30, 50, 75],
    ],
    dtype=np.float64,
)
HAIR_BGR = np.array(
    [[20, 20, 25], [30, 40, 60], [40, 70, 110], [90, 140, 190], [150, 150, 155], [30, 30, 120]], dtype=np.float64
)
#: (u, v) of the five landmarks on the head ellipse (u across, v down, both in [-1, 1]).
LANDMARKS_UV = np.array([[-0.40, -0.12], [0.40, -0.12], [0.0, 0.22], [-0.30, 0.50], [0.30, 0.50]])


class SyntheticFaces(NamedTuple):
    root: str
    train_labels: str
    val_labels: Optional[str]  # None without validation images


class Face(NamedTuple):
    box: np.ndarray  # x1, y1, x2, y2
    landmarks: np.ndarray  # [5, 2]
    has_landmarks: bool


def make_synthetic_faces(
    out_dir,
    num_train: int = 2000,
    num_val: int = 200,
    seed: int = 0,
    image_size: int = 640,
    workers: Optional[int] = None,
    progress: bool = False,
) -> SyntheticFaces:
    """Writes (or finds already written) the synthetic set under ``out_dir``:
    ``train/label.txt``, ``train/images/*.jpg``, the same for ``val/``, and
    ``synthetic.json`` recording the settings, written last.

    A folder that already holds a complete set made with the same settings is used as it
    is. Nothing else is ever written over: a folder with other files, or a set made with
    other settings, raises FileExistsError. ``image_size`` is the longer side of the
    images; ``workers`` processes draw them (default: one per CPU for large sets);
    ``progress`` shows a progress bar.
    """
    settings = {
        "generator": __name__,
        "version": VERSION,
        "seed": int(seed),
        "image_size": int(image_size),
        "num_train": int(num_train),
        "num_val": int(num_val),
    }
    if int(image_size) < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if int(num_train) < 1 or int(num_val) < 0:
        raise ValueError(f"num_train must be >= 1 and num_val >= 0, got {num_train} and {num_val}")
    root = os.path.abspath(os.fspath(out_dir))
    result = SyntheticFaces(
        root, os.path.join(root, "train", "label.txt"), os.path.join(root, "val", "label.txt") if num_val else None
    )
    manifest_path = os.path.join(root, MANIFEST)
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                recorded = json.load(handle)
        except (OSError, ValueError) as error:
            recorded = error
        if not isinstance(recorded, dict):
            raise ValueError(
                f"{manifest_path}: not a synthetic set's manifest ({recorded}); delete {root} to draw the set again"
            )
        same = {k: recorded.get(k) for k in settings} == settings
        if same and recorded.get("complete"):
            return result
        if not same:
            raise FileExistsError(
                f"{root} holds a synthetic face set made with other settings "
                f"({recorded}); choose another folder or delete it"
            )
    elif os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(f"{root} is not empty and is not a synthetic face set; choose another folder")
    atomic_write_text(manifest_path, json.dumps({**settings, "complete": False}, indent=1))
    jobs = [(split, index) for split, count in zip(SPLITS, (num_train, num_val)) for index in range(count)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(jobs) >= 64 else 1
    chunks = [jobs[i :: max(1, workers) * 4] for i in range(max(1, workers) * 4)]
    lines = {}
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc=f"drawing synthetic faces into {root}", unit="image", disable=not progress) as bar:
        if workers <= 1:
            for chunk in chunks:
                lines.update(_draw_and_write(root, seed, image_size, chunk))
                bar.update(len(chunk))
        else:
            # Forked like DataLoader workers: spawned ones would re-run a caller's unguarded script.
            method = "fork" if "fork" in get_all_start_methods() else "spawn"
            with ProcessPoolExecutor(workers, mp_context=get_context(method)) as pool:
                for done in pool.map(
                    _draw_and_write, [root] * len(chunks), [seed] * len(chunks), [image_size] * len(chunks), chunks
                ):
                    lines.update(done)
                    bar.update(len(done))
    for split, count in zip(SPLITS, (num_train, num_val)):
        if count == 0:
            continue
        text = "".join(lines[(split, index)] for index in range(count))
        atomic_write_text(os.path.join(root, split, "label.txt"), text)
    atomic_write_text(manifest_path, json.dumps({**settings, "complete": True}, indent=1))
    return result


def image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def _draw_and_write(root: str, seed: int, image_size: int, jobs: List[Tuple[str, int]]):
    cv2.setNumThreads(1)
    lines = {}
    for split, index in jobs:
        image, faces = draw_image(seed, split, index, image_size)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise OSError(f"cannot encode synthetic image {split}/{index}")
        atomic_write_bytes(os.path.join(root, split, "images", image_name(index)), encoded.tobytes(), durable=False)
        lines[(split, index)] = f"# {image_name(index)}\n" + "".join(format_face_line(f) + "\n" for f in faces)
    return lines


def draw_image(seed: int, split: str, index: int, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (BGR uint8) and its faces ``[G, 15]`` (the dataset's rows, float64,
    rounded to the two decimals that ``label.txt`` holds)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    height, width = _image_shape(rng, image_size)
    image = _background(rng, height, width)
    sizes = _face_sizes(rng, min(height, width))
    boxes = _place(rng, height, width, sizes, [])
    distractors = _place(
        rng, height, width, _face_sizes(rng, min(height, width), count=rng.integers(1, 5)), [b for b, _ in boxes]
    )
    for _, shape in distractors:
        _draw_distractor(rng, image, shape)
    faces = []
    for box, shape in boxes:
        landmarks = _draw_face(rng, image, shape)
        tiny = box[3] - box[1] < 16
        has_landmarks = rng.random() >= (0.7 if tiny else 0.08)
        faces.append(_face_row(box, landmarks, has_landmarks))
    image = _light_and_noise(rng, image)
    rows = np.array(faces, dtype=np.float64).reshape(-1, WIDTH)
    return image, rows


def _image_shape(rng, image_size: int) -> Tuple[int, int]:
    short = int(round(image_size * rng.uniform(0.6, 1.0)))
    return (short, image_size) if rng.random() < 0.6 else (image_size, short)


def _background(rng, height: int, width: int) -> np.ndarray:
    colours = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * math.cos(angle) + ys * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = colours[0] + ramp[..., None] * (colours[1] - colours[0])
    cells = rng.uniform(-1, 1, (height // 24 + 2, width // 24 + 2, 1)) + rng.uniform(-0.3, 0.3, (1, 1, 3))
    texture = cv2.resize(cells.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.uniform(10, 50) * texture
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(15, 50))):
        _draw_clutter(rng, image)
    return image


def _colour(rng) -> Tuple[float, float, float]:
    return tuple(float(c) for c in rng.uniform(0, 255, 3))


def _draw_clutter(rng, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    x, y = int(rng.integers(width)), int(rng.integers(height))
    size = int(min(height, width) * rng.uniform(0.02, 0.3))
    kind = rng.integers(5)
    thickness = -1 if rng.random() < 0.5 else int(rng.integers(1, 6))
    if kind == 0:
        cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), _colour(rng), thickness)
    elif kind == 1:
        cv2.circle(image, (x, y), max(1, size // 2), _colour(rng), thickness, cv2.LINE_AA)
    elif kind == 2:
        end = (x + int(rng.integers(-size, size + 1)), y + int(rng.integers(-size, size + 1)))
        cv2.line(image, (x, y), end, _colour(rng), int(rng.integers(1, 8)), cv2.LINE_AA)
    elif kind == 3:
        points = (np.array([x, y]) + rng.integers(-size, size + 1, (int(rng.integers(3, 7)), 2))).astype(np.int32)
        cv2.fillPoly(image, [points], _colour(rng), cv2.LINE_AA)
    else:
        text = "".join(chr(c) for c in rng.integers(65, 91, int(rng.integers(2, 8))))
        cv2.putText(
            image,
            text,
            (x, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.3, size / 60),
            _colour(rng),
            int(rng.integers(1, 4)),
            cv2.LINE_AA,
        )


def _face_sizes(rng, short_side: int, count: Optional[int] = None) -> np.ndarray:
    """Face heights: portraits (few, large), groups and crowds (many, small)."""
    largest = min(MAX_FACE, 0.8 * short_side)
    regime = rng.random()
    if count is None and regime < 0.03:
        return np.zeros(0)
    if regime < 0.28:
        low, high, n = 80, largest, rng.integers(1, 4)
    elif regime < 0.73:
        low, high, n = 24, 120, rng.integers(3, 11)
    else:
        low, high, n = MIN_FACE, 40, rng.integers(10, 31)
    low, high = min(low, largest), min(high, largest)
    n = n if count is None else count
    return np.exp(rng.uniform(math.log(low), math.log(high), int(n)))


class _Shape(NamedTuple):
    centre: np.ndarray
    half_axes: np.ndarray  # a (across), b (down)
    roll: float  # radians
    yaw: float  # radians


def _shape_box(shape: _Shape) -> np.ndarray:
    a, b = shape.half_axes
    c, s = math.cos(shape.roll), math.sin(shape.roll)
    half = np.array([math.hypot(a * c, b * s), math.hypot(a * s, b * c)])
    return np.concatenate([shape.centre - half, shape.centre + half])


def _place(rng, height: int, width: int, sizes, taken: List[np.ndarray]):
    """Shapes of the given heights at random spots, whole inside the image, apart from
    each other and from ``taken`` boxes (with room for hair above)."""
    placed = []
    occupied = list(taken)
    for size in sorted(sizes, reverse=True):
        half_axes = np.array([size * rng.uniform(0.36, 0.43), size / 2])
        roll = float(np.clip(rng.normal(0, math.radians(10)), -math.radians(30), math.radians(30)))
        yaw = float(rng.uniform(-0.6, 0.6)) if rng.random() < 0.5 else float(rng.uniform(-0.15, 0.15))
        for _ in range(20):
            centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
            shape = _Shape(centre, half_axes, roll, yaw)
            box = _shape_box(shape)
            if box[0] < 0 or box[1] < 0 or box[2] > width - 0.05 or box[3] > height - 0.05:
                continue
            room = box + np.array([-0.05, -0.2, 0.05, 0.05]) * size
            if any(room[0] < o[2] and o[0] < room[2] and room[1] < o[3] and o[1] < room[3] for o in occupied):
                continue
            placed.append((box, shape))
            occupied.append(room)
            break
    return placed


def _to_image(shape: _Shape, uv: np.ndarray) -> np.ndarray:
    """Points (u, v) of the head ellipse, turned by yaw (a cylinder) and roll, in pixels."""
    u = np.sin(np.arcsin(np.clip(uv[:, 0], -1, 1)) + shape.yaw)
    local = np.stack([u * shape.half_axes[0], uv[:, 1] * shape.half_axes[1]], 1)
    c, s = math.cos(shape.roll), math.sin(shape.roll)
    return shape.centre + local @ np.array([[c, s], [-s, c]])


def _fixed(point) -> Tuple[int, int]:
    return int(round(point[0] * _ONE)), int(round(point[1] * _ONE))


def _ellipse(image, centre, axes, angle_rad, colour, thickness=-1):
    axes = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(image, _fixed(centre), axes, math.degrees(angle_rad), 0, 360, colour, thickness, cv2.LINE_AA, _SHIFT)


def _line(image, start, end, colour, thickness):
    cv2.line(image, _fixed(start), _fixed(end), colour, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _skin(rng) -> np.ndarray:
    tone = rng.uniform(0, len(SKIN_TONES_BGR) - 1)
    low = int(tone)
    skin = SKIN_TONES_BGR[low] + (tone - low) * (
        SKIN_TONES_BGR[min(low + 1, len(SKIN_TONES_BGR) - 1)] - SKIN_TONES_BGR[low]
    )
    return np.clip(skin + rng.normal(0, 8, 3), 0, 255)


def _draw_face(rng, image: np.ndarray, shape: _Shape) -> np.ndarray:
    """Draws a face; returns its five landmarks [5, 2] in pixels."""
    a, b = shape.half_axes
    size = 2 * b
    skin = _skin(rng)
    hair = HAIR_BGR[rng.integers(len(HAIR_BGR))] + rng.normal(0, 6, 3)
    if rng.random() < 0.85:
        top = _to_image(shape._replace(yaw=0.0), np.array([[0.0, -0.28]]))[0]
        _ellipse(image, top, (1.08 * a, 0.86 * b), shape.roll, tuple(hair))
    for side in (-1, 1):
        if abs(shape.yaw) < 0.35 or side * shape.yaw < 0:
            ear = _to_image(shape, np.array([[side * 0.97, 0.05]]))[0]
            _ellipse(image, ear, (0.13 * a, 0.22 * b), shape.roll, tuple(skin * 0.85))
    _ellipse(image, shape.centre, shape.half_axes, shape.roll, tuple(skin))
    uv = LANDMARKS_UV + rng.normal(0, 0.025, LANDMARKS_UV.shape)
    points = _to_image(shape, uv)
    tip = _to_image(shape, np.array([[uv[2, 0] + 0.25 * math.sin(shape.yaw), uv[2, 1]]]))[0]
    points[2] = tip
    thin = max(1.0, size / 40)
    eye_w, eye_h = 0.16 * a, 0.075 * b
    for k, eye in enumerate(points[:2]):
        brow = _to_image(shape, uv[k : k + 1] + np.array([[-0.17, -0.16], [0.17, -0.18]]))
        _line(image, brow[0], brow[1], tuple(hair * 0.8), thin)
        squeeze = math.cos(np.arcsin(np.clip(uv[k, 0], -1, 1)) + shape.yaw)
        if size < 24:
            _ellipse(image, eye, (eye_w * squeeze, eye_h), shape.roll, (30, 30, 30))
        else:
            _ellipse(image, eye, (eye_w * squeeze, eye_h), shape.roll, (235, 238, 240))
            _ellipse(image, eye, (0.5 * eye_h, 0.85 * eye_h), shape.roll, tuple(rng.uniform(10, 90, 3)))
    bridge = _to_image(shape, np.array([[0.0, -0.08]]))[0]
    _line(image, bridge, tip, tuple(skin * 0.78), thin)
    _ellipse(image, tip + (tip - bridge) * 0.08, (0.09 * a, 0.04 * b), shape.roll, tuple(skin * 0.6))
    middle = (points[3] + points[4]) / 2
    lips = tuple(np.clip(skin * np.array([0.55, 0.55, 0.95]), 0, 255))
    _ellipse(
        image, middle, (np.linalg.norm(points[4] - points[3]) / 2, (0.05 + 0.06 * rng.random()) * b), shape.roll, lips
    )
    _line(image, points[3], points[4], tuple(skin * 0.35), thin)
    if rng.random() < 0.08:  # sunglasses
        _line(image, points[0], points[1], (20, 20, 20), 2.2 * eye_h)
    if rng.random() < 0.15:
        _occlude(rng, image, shape)
    if rng.random() < 0.25:
        _blur_region(image, _shape_box(shape), size * rng.uniform(0.02, 0.07))
    return points


def _occlude(rng, image: np.ndarray, shape: _Shape) -> None:
    """Covers part of a face: a mask over nose and mouth, or an object from one side."""
    if rng.random() < 0.5:
        corners = _to_image(shape, np.array([[-0.85, 0.1], [0.85, 0.1], [0.7, 0.85], [0.0, 1.0], [-0.7, 0.85]]))
        colour = (235, 225, 215) if rng.random() < 0.5 else (230, 200, 150)
    else:
        side = 1 if rng.random() < 0.5 else -1
        start = rng.uniform(0.2, 0.6)
        corners = _to_image(
            shape, np.array([[side * start, -1.2], [side * 1.3, -1.2], [side * 1.3, 1.2], [side * (start - 0.2), 1.2]])
        )
        colour = _colour(rng)
    cv2.fillPoly(image, [np.round(corners * _ONE).astype(np.int32)], colour, cv2.LINE_AA, _SHIFT)


def _blur_region(image: np.ndarray, box: np.ndarray, sigma: float) -> None:
    if sigma < 0.5:
        return
    height, width = image.shape[:2]
    margin = int(3 * sigma) + 2
    x1, y1 = max(0, int(box[0]) - margin), max(0, int(box[1]) - margin)
    x2, y2 = min(width, int(box[2]) + margin + 1), min(height, int(box[3]) + margin + 1)
    image[y1:y2, x1:x2] = cv2.GaussianBlur(image[y1:y2, x1:x2], (0, 0), sigma)


def _draw_distractor(rng, image: np.ndarray, shape: _Shape) -> None:
    """Something face-like that is not a face: a featureless head, a ring with two dots,
    or a face whose parts are out of place."""
    kind = rng.integers(3)
    a, b = shape.half_axes
    if kind == 0:
        if rng.random() < 0.5:
            _ellipse(
                image,
                _to_image(shape, np.array([[0.0, -0.2]]))[0],
                (1.05 * a, 0.9 * b),
                shape.roll,
                tuple(HAIR_BGR[rng.integers(len(HAIR_BGR))]),
            )
        _ellipse(image, shape.centre, shape.half_axes, shape.roll, tuple(_skin(rng)))
    elif kind == 1:
        _ellipse(image, shape.centre, shape.half_axes, shape.roll, _colour(rng), max(1, int(b / 8)))
        for dot in _to_image(shape, np.array([[-0.35, -0.2], [0.35, -0.2]])):
            _ellipse(image, dot, (0.1 * a, 0.1 * a), 0.0, _colour(rng))
    else:
        _ellipse(image, shape.centre, shape.half_axes, shape.roll, tuple(_skin(rng)))
        parts = _to_image(shape, rng.uniform(-0.6, 0.6, (3, 2)))
        _ellipse(image, parts[0], (0.16 * a, 0.08 * b), shape.roll, (30, 30, 30))
        _ellipse(image, parts[1], (0.3 * a, 0.07 * b), shape.roll, (60, 60, 170))
        _ellipse(image, parts[2], (0.08 * a, 0.15 * b), rng.uniform(0, math.pi), (40, 40, 40))


def _light_and_noise(rng, image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    gain = rng.uniform(0, 0.5)
    angle = rng.uniform(0, 2 * math.pi)
    ramp_x = np.linspace(-1, 1, width, dtype=np.float32) * math.cos(angle)
    ramp_y = np.linspace(-1, 1, height, dtype=np.float32) * math.sin(angle)
    light = 1 + gain * 0.5 * (ramp_y[:, None] + ramp_x[None, :])
    noisy = image.astype(np.float32) * light[..., None] * rng.uniform(0.7, 1.2)
    sigma = rng.uniform(0, 8)
    noisy += rng.standard_normal(noisy.shape, dtype=np.float32) * sigma
    image = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < 0.15:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    return image


def _face_row(box: np.ndarray, landmarks: np.ndarray, has_landmarks: bool) -> List[float]:
    """The dataset's row for a face, rounded as label.txt stores it (x, y, w, h and the
    points to two decimals; x2 = x + w as the reader computes it)."""
    x, y = round(float(box[0]), 2), round(float(box[1]), 2)
    w, h = round(float(box[2] - box[0]), 2), round(float(box[3] - box[1]), 2)
    points = [round(float(v), 2) for v in landmarks.reshape(-1)] if has_landmarks else [-1.0] * 10
    return [x, y, x + w, y + h, *points, 1.0 if has_landmarks else -1.0]
