"""The Detector end to end: parity with Pytorch_Retinaface, batching, inputs, errors.
(Just over 400 lines; image files, CUDA numerics and the engines have their own files.)"""

import json
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
import torch
from shared_data import CROWD, EXPECTED, WEIGHTS, assert_reproduces_the_pipeline

import retinaface_ext
from retinaface_ext import Detections, Detector, RetinaFace, draw_detections
from retinaface_ext.ops.reference import box_iou
from retinaface_ext.priors import prior_boxes

pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def test_reproduces_the_pytorch_retinaface_pipeline(detector, crowd):
    ours = detector.detect(crowd)
    assert_reproduces_the_pipeline(ours)
    # Decreasing scores, landmarks in (x, y) pairs inside their faces.
    assert bool((ours.scores[1:] <= ours.scores[:-1]).all())
    confident = ours.above(0.5)
    centre = confident.landmarks.mean(1)
    assert bool(((centre >= confident.boxes[:, :2]) & (centre <= confident.boxes[:, 2:])).all())


def test_every_input_kind_gives_the_same_faces(detector, crowd):
    reference = detector.detect(crowd)
    chw = torch.from_numpy(crowd).permute(2, 0, 1)
    for image in (str(CROWD), CROWD, chw, chw.float(), crowd.astype(np.float32), crowd[:, :, :].copy()):
        result = detector.detect(image)
        assert isinstance(result, Detections)
        torch.testing.assert_close(result.boxes, reference.boxes)
        torch.testing.assert_close(result.scores, reference.scores)
    as_batch = detector.detect(chw[None].expand(2, -1, -1, -1))
    assert isinstance(as_batch, list) and len(as_batch) == 2
    torch.testing.assert_close(as_batch[1].boxes, reference.boxes)


def assert_same_detections(a, b, atol=1e-3):
    assert len(a) == len(b)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=atol)
    torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=100 * atol)
    torch.testing.assert_close(a.landmarks, b.landmarks, rtol=0, atol=100 * atol)


def test_batch_of_different_sizes_equals_one_by_one(detector, crowd, monkeypatch):
    """Also with every torch.empty filled with NaN: the padding of a shared canvas must be
    written (zeros), never left as it was allocated."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: empty(*args, **kwargs).fill_(float("nan")))
    images = [
        crowd,
        cv2.resize(crowd, (500, 300)),
        crowd[:400, 250:550].copy(),
        crowd[100:131, 600:617].copy(),
        cv2.resize(crowd, (700, 900)),
    ]
    batched = detector.detect(images)
    assert len(batched) == len(images)
    for image, together in zip(images, batched):
        assert_same_detections(together, detector.detect(image), atol=1e-4)
    assert len(batched[0]) > 100 and len(batched[2]) > 10


def test_batch_split_into_chunks(crowd):
    small = Detector(WEIGHTS, device="cpu", batch_size=2)
    images = [crowd[:300, :400].copy(), crowd[300:, 500:].copy(), crowd[:200].copy()]
    for together, image in zip(small.detect(images), images):
        assert_same_detections(together, small.detect(image), atol=1e-4)


def test_folding_on_and_off_give_the_same_faces(crowd):
    folded = Detector(WEIGHTS, device="cpu", fold_batchnorm=True, channels_last=True)
    plain = Detector(WEIGHTS, device="cpu", fold_batchnorm=False, channels_last=False)
    images = [crowd, crowd[:300, :500].copy()]
    for a, b in zip(folded.detect(images), plain.detect(images)):
        a, b = a.above(0.05), b.above(0.05)
        assert_same_detections(a, b, atol=1e-4)


def test_resizing_maps_boxes_back_to_the_original_pixels(detector, crowd):
    upscaled = cv2.resize(crowd, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)
    resized = Detector(WEIGHTS, device="cpu", target_size=624).detect(upscaled)
    assert resized.boxes.shape[0] > 0
    direct = detector.detect(crowd).above(0.5)
    again = resized.above(0.5)
    iou = box_iou(direct.boxes, again.boxes / 1.5)
    assert float(iou.max(1).values.min()) > 0.8
    shrunk = Detector(WEIGHTS, device="cpu", max_size=512).detect(crowd).above(0.5)
    assert float(box_iou(direct.boxes, shrunk.boxes).max(1).values.median()) > 0.7
    assert float(shrunk.boxes[:, 2].max()) > 700  # in the original's pixels, not the 512 wide input


def test_gray_and_alpha_images(detector, crowd):
    gray = cv2.cvtColor(crowd, cv2.COLOR_BGR2GRAY)
    assert_same_detections(detector.detect(gray), detector.detect(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
    assert_same_detections(detector.detect(gray[:, :, None]), detector.detect(gray))
    bgra = np.concatenate([crowd, np.full(crowd.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert_same_detections(detector.detect(bgra), detector.detect(crowd))


def test_tiny_and_blank_images_give_empty_results(detector):
    for image in (np.zeros((1, 1, 3), np.uint8), np.full((2, 3, 3), 255, np.uint8), np.zeros((40, 30, 3), np.uint8)):
        result = detector.detect(image)
        assert result.boxes.shape == (len(result), 4) and result.landmarks.shape == (len(result), 5, 2)
    assert len(detector.detect(np.zeros((1, 1, 3), np.uint8))) == 0


def test_bad_inputs_are_named(detector, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        detector.detect(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode image file: .*broken.jpg"):
        detector.detect(str(broken))
    with pytest.raises(ValueError, match="image: empty image"):
        detector.detect(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images\[1\]: expected 1, 3 or 4 channels, got 5"):
        detector.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 5), np.uint8)])
    with pytest.raises(ValueError, match="uint8 or floating point"):
        detector.detect(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match=r"expected an \[H, W, C\] array"):
        detector.detect(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="expected a path, a numpy array, a tensor or a PIL image"):
        detector.detect(42)
    with pytest.raises(ValueError, match=r"images\[0\]: the image holds NaN"):
        detector.detect([np.full((8, 8, 3), np.nan, np.float32)])
    with pytest.raises(ValueError, match="NaN or infinite"):
        detector.detect(torch.full((3, 8, 8), float("inf")))
    huge = torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, 10_000, 9_000)
    with pytest.raises(ValueError, match="pass max_size"):
        detector.detect(huge)


def test_constructor_errors(tmp_path):
    with pytest.raises(ValueError, match="resnet50"):
        Detector(WEIGHTS, backbone="resnet50")
    with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
        Detector(WEIGHTS, top_k=0)
    with pytest.raises(ValueError, match="nms_threshold"):
        Detector(WEIGHTS, nms_threshold=1.5)
    with pytest.raises(TypeError, match="expected a RetinaFace"):
        Detector(torch.nn.Linear(2, 2))


def test_a_model_is_copied_not_folded_in_place():
    model = RetinaFace("mobilenet0.25").eval()
    Detector(model, device="cpu")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_keep_top_k_and_top_k_bound_the_results(crowd):
    assert len(Detector(WEIGHTS, device="cpu", keep_top_k=5).detect(crowd)) == 5
    few = Detector(WEIGHTS, device="cpu", top_k=10).detect(crowd)
    full = Detector(WEIGHTS, device="cpu").detect(crowd)
    assert len(few) <= 10
    torch.testing.assert_close(few.scores[:3], full.scores[:3])
    per_image = Detector(WEIGHTS, device="cpu", top_k=10).detect([crowd, crowd[:300].copy()])
    assert all(len(d) <= 10 for d in per_image) and len(per_image[1]) > 0


def test_to_list_is_json_ready(detector, crowd):
    faces = detector.detect(crowd).above(0.9).to_list()
    assert len(faces) > 10
    json.dumps(faces)
    assert set(faces[0]["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_draw_detections(detector, crowd):
    detections = detector.detect(crowd)
    drawn = draw_detections(crowd, detections, threshold=0.6)
    assert drawn.shape == crowd.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, crowd)
    assert np.array_equal(draw_detections(crowd, detections, threshold=1.1), crowd)
    with pytest.raises(ValueError, match="BGR numpy array"):
        draw_detections(crowd[:, :, 0], detections)


def test_public_api():
    for name in ("Detector", "Detections", "RetinaFace", "draw_detections"):
        assert hasattr(retinaface_ext, name)


def test_the_pipeline_transcription_reproduces_the_expected_file(crowd):
    """The oracle of the benchmarks (Pytorch_Retinaface's detect.py, transcribed) gives
    the shared expected output with our network: the network and the oracle are right."""
    from seed_reference import pytorch_retinaface_detect

    rows = pytorch_retinaface_detect(RetinaFace.from_checkpoint(WEIGHTS).eval(), crowd)
    expected = np.array(json.loads(EXPECTED.read_text())["detections"], dtype=np.float64)
    assert rows.shape == expected.shape
    np.testing.assert_allclose(rows, expected, atol=2e-3)


def test_a_deformable_model_detects_and_folds(crowd):
    torch.manual_seed(0)
    model = RetinaFace("mobilenet0.25", dcn=True).eval()
    small = crowd[:160, :240].copy()
    folded = Detector(model, device="cpu", score_threshold=0.3).detect([small, small[:100]])
    plain = Detector(model, device="cpu", score_threshold=0.3, fold_batchnorm=False).detect([small, small[:100]])
    assert len(folded[0]) > 0
    for a, b in zip(folded, plain):
        assert_same_detections(a, b, atol=1e-4)


def test_padding_groups_bound_the_padding():
    from retinaface_ext.inference import MAX_PADDING_FACTOR, padding_groups

    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        n = int(torch.randint(1, 12, (1,), generator=g))
        sizes = [tuple(int(v) for v in torch.randint(1, 3000, (2,), generator=g)) for _ in range(n)]
        if trial % 2:
            sizes = [(4000, 8) if i % 2 else (8, 4000) for i in range(n)]
        groups = padding_groups(sizes, max_images=4)
        assert sorted(i for group in groups for i in group) == list(range(n))
        for group in groups:
            assert len(group) <= 4
            canvas = max(sizes[i][0] for i in group) * max(sizes[i][1] for i in group)
            own = sum(sizes[i][0] * sizes[i][1] for i in group)
            assert len(group) == 1 or canvas * len(group) <= MAX_PADDING_FACTOR * own
    assert padding_groups([(100, 100), (90, 95), (100, 98)], 8) == [[0, 2, 1]]  # similar sizes share a pass


def test_tall_and_wide_images_do_not_share_a_giant_canvas(tmp_path):
    """Eight images alternating 4000x8 and 8x4000 (0.26 MP in all) once needed one 6.1 GB
    canvas; in its own process, the peak memory must stay far below that."""
    script = textwrap.dedent(f"""
        import resource, numpy as np
        from retinaface_ext import Detector
        detector = Detector({str(WEIGHTS)!r}, device="cpu")
        images = [np.zeros((4000, 8, 3), np.uint8) if i % 2 else np.zeros((8, 4000, 3), np.uint8) for i in range(8)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = detector.detect(images)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(results), (after - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    count, grown_mb = (int(v) for v in result.stdout.split())
    assert count == 8 and grown_mb < 1000, f"the peak memory grew by {grown_mb} MB"


def declared_size_png(path, height, width):
    """A real (decodable) gray PNG of height x width zeros: a few hundred KB on disk."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return path


def test_huge_images_are_refused_from_their_header(detector, tmp_path, monkeypatch):
    big = declared_size_png(tmp_path / "big.png", 9000, 8000)  # 72 MP > 64 MP
    assert big.stat().st_size < 2_000_000
    assert retinaface_ext.images.image_file_size(big) == (9000, 8000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(ValueError, match=r"image \(.*big.png\): 9000x8000 pixels is more than this detector takes"):
        detector.detect(big)
    with pytest.raises(ValueError, match=r"images\[1\] \(.*big.png\): 9000x8000"):
        detector.detect([np.zeros((8, 8, 3), np.uint8), str(big)])
    # With max_size it is shrunk, so it may be decoded (up to MAX_DECODED_PIXELS)...
    shrunk = Detector(WEIGHTS, device="cpu", max_size=2000)
    with pytest.raises(AssertionError, match="the image was decoded"):
        shrunk.detect(big)
    # ... but never a file beyond that.
    monkeypatch.setattr(retinaface_ext.images, "MAX_DECODED_PIXELS", 50_000_000)
    monkeypatch.setattr(retinaface_ext.inference.preprocess, "MAX_DECODED_PIXELS", 50_000_000)
    with pytest.raises(ValueError, match="declares 9000x8000 pixels, more than 50000000 .not decoded."):
        shrunk.detect(big)


def test_the_prior_cache_is_not_shared_with_callers(detector, crowd):
    from retinaface_ext.priors import prior_boxes

    count = len(detector.detect(crowd))
    priors = prior_boxes(crowd.shape[:2])  # the canvas of that detection
    weight = torch.ones(4, requires_grad=True)
    (priors * weight).sum().backward()  # once "Inference tensors cannot be saved for backward"
    priors.mul_(0.5)  # once corrupted every later detection at this size (171 -> 141 faces)
    assert len(detector.detect(crowd)) == count


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_size=0), "target_size must be a positive number"),
        (dict(target_size=-640), "target_size must be a positive number"),
        (dict(target_size=float("nan")), "target_size must be a positive number"),
        (dict(max_size=0), "max_size must be a positive number"),
        (dict(max_size="2150"), "max_size must be a positive number"),
        (dict(score_threshold=-0.1), r"score_threshold must be a number in \[0, 1\]"),
        (dict(score_threshold=float("nan")), r"score_threshold must be a number in \[0, 1\]"),
        (dict(nms_threshold=float("nan")), r"nms_threshold must be a number in \[0, 1\]"),
        (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
        (dict(device="gpu"), "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ],
)
def test_out_of_range_settings_are_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Detector(WEIGHTS, **kwargs)


def test_the_old_name_of_the_score_threshold_still_works():
    with pytest.warns(DeprecationWarning, match="now score_threshold"):
        detector = Detector(WEIGHTS, device="cpu", confidence_threshold=0.3)
    assert detector.settings.score_threshold == 0.3


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_explained():
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here"):
        Detector(WEIGHTS, device="cuda")


@pytest.mark.parametrize("scale", [1e6, 1e36])  # the decoded boxes overflow; the network itself does
def test_non_finite_results_name_the_image(detector, crowd, scale):
    hot = crowd.astype(np.float32) * scale
    with pytest.raises(ValueError, match=r"images\[1\]: .* not finite .*the image in 0..255"):
        detector.detect([crowd[:200, :200].copy(), hot])


def test_a_model_with_nan_weights_is_refused():
    model = RetinaFace.from_checkpoint(WEIGHTS).eval()
    with torch.no_grad():
        model.ClassHead[1].conv1x1.weight[0, 0] = float("nan")  # once silently dropped a level (171 -> 99)
    with pytest.raises(ValueError, match=r"weights_or_model: 1 tensors hold NaN or inf: ClassHead.1.conv1x1.weight"):
        Detector(model, device="cpu")


def test_rgb_inputs_and_pil_images(detector, crowd):
    from PIL import Image

    reference = detector.detect(crowd)
    rgb = crowd[:, :, ::-1].copy()
    assert_same_detections(detector.detect(rgb, color="rgb"), reference, atol=0)
    chw_rgb = torch.from_numpy(rgb).permute(2, 0, 1)
    assert_same_detections(detector.detect(chw_rgb, color="rgb"), reference, atol=0)
    assert_same_detections(detector.detect(Image.fromarray(rgb)), reference, atol=0)
    rgba = Image.fromarray(rgb).convert("RGBA")
    assert_same_detections(detector.detect([rgba], color="bgr")[0], reference, atol=0)  # PIL is always RGB
    assert len(detector.detect(rgb).above(0.6)) < len(reference.above(0.6))  # the mistake it prevents
    with pytest.raises(ValueError, match="color must be one of"):
        detector.detect(crowd, color="BGR ")


def test_detections_are_iterable_indexable_and_clippable(detector, crowd):
    faces = detector.detect(crowd).above(0.5)
    assert faces.image_size == (624, 1024)
    listed = list(faces)
    assert len(listed) == len(faces) > 10
    first = faces[0]
    assert isinstance(first, retinaface_ext.inference.Face) and isinstance(first.score, float)
    torch.testing.assert_close(first.box, faces.boxes[0])
    assert first.landmarks.shape == (5, 2) and faces[-1].score == float(faces.scores[-1])
    top = faces[:3]
    assert isinstance(top, Detections) and len(top) == 3 and top.image_size == faces.image_size
    with pytest.raises(IndexError):
        faces[len(faces)]
    edge = Detections(
        torch.tensor([[-5.0, 10.0, 1100.0, 700.0]]), torch.tensor([0.9]), torch.zeros(1, 5, 2), (624, 1024)
    )
    assert edge.clipped().boxes.tolist() == [[0.0, 10.0, 1024.0, 624.0]]
    clipping = Detector(WEIGHTS, device="cpu", clip_boxes=True).detect(crowd)
    assert float(clipping.boxes[:, 2].max()) <= 1024 and float(clipping.boxes.min()) >= 0


def test_non_finite_outputs_name_their_image():
    detector = Detector(WEIGHTS, device="cpu")
    canvas = (64, 96)
    priors = prior_boxes(canvas)
    g = torch.Generator().manual_seed(0)
    loc, logits, landm = (torch.randn(3, len(priors), k, generator=g) for k in (4, 2, 10))
    names = ["a", "b", "c"]
    assert len(detector.postprocess(loc, logits, landm, canvas, names=names)) == 3
    bad = logits.clone()
    bad[1, 7, 0] = float("nan")  # a NaN score is never above the threshold: the face would vanish
    with pytest.raises(ValueError, match="^b: the network's face scores are not finite"):
        detector.postprocess(loc, bad, landm, canvas, names=names)
    logits[2, 5] = torch.tensor([-10.0, 10.0])  # a sure candidate, whose box overflows
    bad = loc.clone()
    bad[2, 5, 2] = 1e4
    with pytest.raises(ValueError, match="^c: the network's decoded boxes are not finite"):
        detector.postprocess(bad, logits, landm, canvas, names=names)
    bad[2, 5, 2] = 0.0
    bad[0, 3] = 1e4  # not a candidate: its overflow does not matter
    logits[0, 3] = torch.tensor([10.0, -10.0])
    assert len(detector.postprocess(bad, logits, landm, canvas, names=names)) == 3


def test_settings_as_one_object():
    from retinaface_ext.models import DetectionSettings

    model = RetinaFace("mobilenet0.25").eval()
    settings = DetectionSettings(score_threshold=0.3, keep_top_k=5)
    assert Detector(model, device="cpu", settings=settings).settings is settings
    with pytest.raises(ValueError, match="give settings or score_threshold"):
        Detector(model, device="cpu", settings=settings, top_k=10)
    with pytest.raises(TypeError, match="settings must be a DetectionSettings"):
        Detector(model, device="cpu", settings={"score_threshold": 0.3})
