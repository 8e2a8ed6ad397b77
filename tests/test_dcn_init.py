"""A plain checkpoint is a good start for a DCN model: same outputs at step 0."""

import json
import pathlib

import cv2
import numpy as np
import pytest
import torch

from retinaface_ext import Detector, RetinaFace
from retinaface_ext.models.checkpoint import plain_to_dcn
from retinaface_ext.ops.reference import box_iou

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
EXPECTED = SHARED / "expected" / "widerface_crowd.mobilenet0.25.json"
needs_shared = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")


def randomised(model, seed=0):
    """Random weights and BatchNorm statistics, so that nothing is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = (
                    torch.rand(tensor.shape, generator=g) * 0.5 + 0.75
                    if name.endswith("running_var")
                    else torch.randn(tensor.shape, generator=g) * 0.1
                )
                tensor.copy_(values)
    return model.eval()


@pytest.mark.parametrize("backbone, size", [("mobilenet0.25", (96, 128)), ("resnet50", (64, 64))])
def test_a_dcn_model_from_a_plain_state_dict_computes_the_plain_model(backbone, size):
    plain = randomised(RetinaFace(backbone))
    dcn = RetinaFace.from_checkpoint(plain.state_dict(), dcn=True).eval()
    assert dcn.dcn and not plain.dcn
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        for got, want in zip(dcn(images), plain(images)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    offsets = [m.conv_offset.weight for m in dcn.modules() if hasattr(m, "conv_offset")]
    assert len(offsets) == 15 and all(bool((w == 0).all()) for w in offsets)


def test_plain_to_dcn_doubles_only_the_deformable_weights():
    plain = randomised(RetinaFace("mobilenet0.25"))
    dcn = RetinaFace("mobilenet0.25", dcn=True)
    converted = plain_to_dcn(plain.state_dict(), dcn)
    for key, value in plain.state_dict().items():
        expected = value * 2 if key.startswith("ssh") and key.endswith(".0.weight") else value
        torch.testing.assert_close(converted[key], expected, rtol=0, atol=0)
    assert set(converted) == set(dcn.state_dict())


@needs_shared
def test_the_published_checkpoint_as_a_dcn_model_reproduces_the_pipeline():
    plain = RetinaFace.from_checkpoint(WEIGHTS).eval()
    dcn = RetinaFace.from_checkpoint(WEIGHTS, dcn=True).eval()
    image = torch.from_numpy(cv2.imread(str(CROWD))).permute(2, 0, 1)[None].float()
    image = image - torch.tensor([104.0, 117.0, 123.0])[:, None, None]
    with torch.no_grad():
        for got, want in zip(dcn(image), plain(image)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    expected = np.array(json.loads(EXPECTED.read_text())["detections"], dtype=np.float64)
    expected = expected[expected[:, 4] >= 0.1]
    ours = Detector(dcn, device="cpu").detect(cv2.imread(str(CROWD)))
    confident = ours.scores >= 0.1
    assert int(confident.sum()) == len(expected) == 48
    iou = box_iou(torch.as_tensor(expected[:, :4]), ours.boxes.double())
    best = iou.argmax(1)
    assert len(set(best.tolist())) == 48 and float(iou.max(1).values.min()) >= 0.99
    np.testing.assert_allclose(ours.scores[best].numpy(), expected[:, 4], atol=1e-3)
