"""The ops and nn.DeformConv2d compile with torch.jit.script, as torchvision's do, so that
scripted deployments can swap them in; the scripted code gives the eager results and
survives a save/load round trip."""

import io
import warnings
from typing import List

import pytest
import torch

from retinaface_ext import nn as rnn
from retinaface_ext import ops

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated in 2.x


def script(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fn)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def postprocess(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> List[torch.Tensor]:
    keep = ops.nms(boxes, scores, 0.5)
    per_class = ops.batched_nms(boxes, scores, classes, 0.5)
    return [keep, per_class, ops.box_iou(boxes[keep], boxes)]


def deformable(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ops.deform_conv2d(x, offset, weight, None, (1, 1), 1, [1, 1], mask)


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dcn = rnn.DeformConv2d(4, 6, 3, padding=1)
        self.plain = rnn.DeformConv2d(6, 2, 3, stride=2, padding=1, modulated=False, bias=False)

    def forward(self, x):
        return self.plain(self.dcn(x))


def test_scripted_box_ops_equal_eager(boxes_factory):
    boxes, scores = boxes_factory("crowd", 500, seed=1)
    classes = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(0))
    for got, expected in zip(script(postprocess)(boxes, scores, classes), postprocess(boxes, scores, classes)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_scripted_deform_conv2d_and_module_equal_eager():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 7, generator=g)
    offset, mask = torch.randn(2, 18, 9, 7, generator=g), torch.rand(2, 9, 9, 7, generator=g)
    weight = torch.randn(5, 4, 3, 3, generator=g)
    torch.testing.assert_close(script(deformable)(x, offset, weight, mask), deformable(x, offset, weight, mask))
    head = Head()
    torch.nn.init.normal_(head.dcn.conv_offset.weight, std=0.1)
    torch.testing.assert_close(script(head)(x), head(x))
