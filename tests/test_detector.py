"""The Detector end to end: parity with Pytorch_Retinaface, batching, inputs, errors."""

import json
import pathlib

import cv2
import numpy as np
import pytest
import torch

import retinaface_ext
from retinaface_ext import Detections, Detector, RetinaFace, draw_detections
from retinaface_ext.ops.reference import box_iou

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
EXPECTED = SHARED / "expected" / "widerface_crowd.mobilenet0.25.json"
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


@pytest.fixture(scope="module")
def detector():
    return Detector(WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def crowd():
    return cv2.imread(str(CROWD))


def match_one_to_one(expected, ours, min_score=0.1):
    """Pairs (expected row, our index) by best IoU for every expected detection with score
    >= min_score; asserts the pairing is one to one and that ours has nothing else there."""
    expected = expected[expected[:, 4] >= min_score]
    mine = ours.scores >= min_score
    iou = box_iou(torch.as_tensor(expected[:, :4], dtype=torch.float64), ours.boxes.double())
    best = iou.argmax(1)
    assert len(set(best.tolist())) == len(best), "two expected detections matched one of ours"
    assert int(mine.sum()) == len(expected), f"{int(mine.sum())} of ours >= {min_score}, {len(expected)} expected"
    assert bool(mine[best].all())
    return expected, best, iou.max(1).values


def test_reproduces_the_pytorch_retinaface_pipeline(detector, crowd):
    expected = np.array(json.loads(EXPECTED.read_text())["detections"], dtype=np.float64)
    ours = detector.detect(crowd)
    expected, best, iou = match_one_to_one(expected, ours)
    assert len(expected) == 48
    assert float(iou.min()) >= 0.99
    np.testing.assert_allclose(ours.scores[best].numpy(), expected[:, 4], atol=1e-3)
    landmarks = ours.landmarks[best].reshape(-1, 10).numpy()
    assert np.abs(landmarks - expected[:, 5:]).max() <= 1.0
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


def test_batch_of_different_sizes_equals_one_by_one(detector, crowd):
    images = [crowd, cv2.resize(crowd, (500, 300)), crowd[:400, 250:550].copy(), crowd[100:131, 600:617].copy(),
              cv2.resize(crowd, (700, 900))]
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


@pytest.mark.cuda
def test_cuda_detector_equals_cpu(crowd):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = Detector(WEIGHTS, device="cpu").detect([crowd, crowd[:300, :400].copy()])
    gpu = Detector(WEIGHTS, device="cuda").detect([crowd, crowd[:300, :400].copy()])
    for a, b in zip(cpu, gpu):
        a, b = a.above(0.05), b.to("cpu").above(0.05)
        assert_same_detections(a, b, atol=1e-3)


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
    folded = Detector(model, device="cpu", confidence_threshold=0.3).detect([small, small[:100]])
    plain = Detector(model, device="cpu", confidence_threshold=0.3, fold_batchnorm=False).detect([small, small[:100]])
    assert len(folded[0]) > 0
    for a, b in zip(folded, plain):
        assert_same_detections(a, b, atol=1e-4)
