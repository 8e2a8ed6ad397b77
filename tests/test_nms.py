"""NMS: kernel = reference = torchvision, on random and adversarial boxes; every error path."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retinaface_ext import ops
from retinaface_ext.ops import reference

torchvision = pytest.importorskip("torchvision", reason="torchvision is an optional peer")  # noqa: F841


def kernel_reference_torchvision(boxes, scores, threshold, check_torchvision=True):
    """Asserts kernel == reference (== torchvision) and returns the kept indices."""
    kept = ops.nms(boxes, scores, threshold)
    assert kept.dtype == torch.int64 and kept.device == boxes.device
    expected = reference.nms(boxes.cpu(), scores.cpu(), threshold)
    torch.testing.assert_close(kept.cpu(), expected, rtol=0, atol=0)
    if check_torchvision and boxes.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(
            kept.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), threshold), rtol=0, atol=0
        )
    return kept


@pytest.mark.parametrize("kind", ["sparse", "crowd"])
@pytest.mark.parametrize("n", [1, 2, 10, 300, 1000, 5000, 20000])
def test_random_sets(boxes_factory, device, kind, n):
    boxes, scores = boxes_factory(kind, n, seed=n, device=device)
    kept = kernel_reference_torchvision(boxes, scores, 0.4)
    assert 0 < len(kept) <= n


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_thresholds_and_dtypes(boxes_factory, device, threshold, dtype):
    boxes, scores = boxes_factory("crowd", 2000, seed=7, dtype=dtype, device=device)
    kernel_reference_torchvision(boxes, scores, threshold)


def test_threshold_one_keeps_duplicates_and_zero_keeps_disjoint(device):
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [10, 0, 20, 10], [5, 0, 15, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    boxes, scores = boxes.to(device), scores.to(device)
    # IoU 1 is not > 1; touching boxes (IoU 0) are not > 0; the half-overlapping one is.
    assert kernel_reference_torchvision(boxes, scores, 1.0).tolist() == [0, 1, 2, 3]
    assert kernel_reference_torchvision(boxes, scores, 0.0).tolist() == [0, 2]


def test_iou_exactly_at_threshold_is_kept(device):
    # Boxes 1 and 2 each overlap box 0 with IoU exactly 0.5 (50 / 100 and 100 / 200).
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 20, 10]], dtype=torch.float64, device=device)
    scores = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64, device=device)
    assert kernel_reference_torchvision(boxes, scores, 0.5).tolist() == [0, 1, 2]
    assert kernel_reference_torchvision(boxes, scores, 0.4999).tolist() == [0]


def test_exact_score_ties_keep_lower_index_first(boxes_factory, device):
    boxes, _ = boxes_factory("crowd", 3000, seed=3, device=device)
    scores = (torch.arange(3000, device=device) % 4).float()  # four distinct scores
    kept = kernel_reference_torchvision(boxes, scores, 0.5)
    for score in scores[kept].unique():
        same = kept[scores[kept] == score]
        assert torch.equal(same, same.sort().values)


@pytest.mark.parametrize("n", [40, 3000])  # the comparison sort and the radix sort of the CPU kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_score_order_over_signs_zeros_and_magnitudes(boxes_factory, device, n, dtype):
    boxes, _ = boxes_factory("crowd", n, seed=5, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    values = torch.tensor([-0.0, 0.0, -1.5, 2.25, tiny / 4, -tiny / 4, 1e30, -1e30, 7.0], dtype=dtype)
    scores = values[torch.randint(0, len(values), (n,), generator=torch.Generator().manual_seed(n))].to(device)
    kernel_reference_torchvision(boxes, scores, 0.5)
    # -0 and +0 are one score: between duplicates the lower index wins, whatever its sign.
    duplicates = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=dtype, device=device).repeat(n, 1)
    signed_zeros = torch.tensor([-0.0, 0.0], dtype=dtype, device=device).repeat(n // 2)
    assert kernel_reference_torchvision(duplicates, signed_zeros, 0.5).tolist() == [0]


def test_all_equal_scores_and_duplicate_boxes(device):
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]], device=device).repeat(500, 1)
    scores = torch.ones(500, device=device)
    assert kernel_reference_torchvision(boxes, scores, 0.5).tolist() == [0]
    # Duplicates each appear once per group, with the lowest index of the group.
    groups = torch.tensor([[0, 0, 10, 10], [100, 100, 120, 130]], dtype=torch.float32, device=device)
    boxes = groups[torch.arange(40, device=device) % 2]
    assert kernel_reference_torchvision(boxes, torch.ones(40, device=device), 0.9).tolist() == [0, 1]


def test_one_box_and_empty_input(device):
    one = ops.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device), torch.tensor([0.5], device=device), 0.5)
    assert one.tolist() == [0]
    for dtype in (torch.float32, torch.float64):
        empty = ops.nms(torch.zeros(0, 4, dtype=dtype, device=device), torch.zeros(0, dtype=dtype, device=device), 0.5)
        assert empty.shape == (0,) and empty.dtype == torch.int64
        empty = ops.batched_nms(
            torch.zeros(0, 4, dtype=dtype, device=device),
            torch.zeros(0, dtype=dtype, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
            0.5,
        )
        assert empty.shape == (0,) and empty.dtype == torch.int64


def test_degenerate_boxes_have_zero_area(boxes_factory, device):
    boxes, scores = boxes_factory("crowd", 1000, seed=11, device=device)
    flipped = torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.3
    boxes[flipped.to(device)] = boxes[flipped.to(device)][:, [2, 3, 0, 1]]  # x2 < x1 and y2 < y1
    boxes[:50, 2] = boxes[:50, 0]  # zero width
    kept = kernel_reference_torchvision(boxes, scores, 0.3)
    # A degenerate box overlaps nothing: it is always kept.
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    assert set(torch.nonzero(degenerate).flatten().tolist()) <= set(kept.tolist())


def test_non_contiguous_inputs(boxes_factory, device):
    boxes, scores = boxes_factory("sparse", 4000, seed=5, device=device)
    boxes_t = boxes.t().contiguous().t()  # column-major view
    scores_strided = torch.stack([scores, -scores], 1)[:, 0]
    assert not boxes_t.is_contiguous() and not scores_strided.is_contiguous()
    torch.testing.assert_close(ops.nms(boxes_t, scores_strided, 0.5), ops.nms(boxes, scores, 0.5))
    kernel_reference_torchvision(boxes_t, scores_strided, 0.5)


def test_huge_box_among_small_ones(boxes_factory, device):
    """One box spanning the image widens the sweep window; results must not change."""
    boxes, scores = boxes_factory("sparse", 3000, seed=9, device=device)
    boxes[17] = torch.tensor([0.0, 0.0, 1100.0, 1100.0], device=device)
    scores[17] = 0.5
    kernel_reference_torchvision(boxes, scores, 0.05)


coordinate = st.integers(min_value=0, max_value=12)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate, st.integers(0, 3)), min_size=1, max_size=40),
    threshold=st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 2 / 3, 0.7, 1.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_grid_boxes_property(raw, threshold, dtype):
    """Small integer boxes make exact IoU ties with the thresholds, score ties and degenerate boxes."""
    data = torch.tensor(raw, dtype=dtype)
    boxes, scores = data[:, :4], data[:, 4]
    kernel_reference_torchvision(boxes, scores, threshold)
    classes = (data[:, 0] % 3).long()
    torch.testing.assert_close(
        ops.batched_nms(boxes, scores, classes, threshold),
        reference.batched_nms(boxes, scores, classes, threshold),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("num_classes", [1, 3, 80, 1000])
def test_batched_nms(boxes_factory, device, num_classes):
    boxes, scores = boxes_factory("crowd", 5000, seed=num_classes, device=device)
    idxs = torch.randint(0, num_classes, (5000,), generator=torch.Generator().manual_seed(0)).to(device)
    kept = ops.batched_nms(boxes, scores, idxs, 0.5)
    expected = reference.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5)
    torch.testing.assert_close(kept.cpu(), expected, rtol=0, atol=0)
    # torchvision's batched_nms orders equal scores its own way; the kept set must match.
    theirs = torchvision.ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.5)
    assert sorted(kept.tolist()) == sorted(theirs.tolist())
    # One class is plain NMS; classes far apart equal NMS of all boxes with offsets.
    if num_classes == 1:
        torch.testing.assert_close(kept, ops.nms(boxes, scores, 0.5))
    assert torch.all(scores[kept][:-1] >= scores[kept][1:])


def test_batched_nms_accepts_int32_idxs(boxes_factory):
    boxes, scores = boxes_factory("crowd", 500, seed=2)
    idxs = torch.arange(500, dtype=torch.int32) % 5
    torch.testing.assert_close(
        ops.batched_nms(boxes, scores, idxs, 0.5), ops.batched_nms(boxes, scores, idxs.long(), 0.5)
    )


def test_opcheck(boxes_factory, device):
    boxes, scores = boxes_factory("crowd", 300, seed=1, device=device)
    torch.library.opcheck(torch.ops.retinaface_ext.nms.default, (boxes, scores, 0.5))
    idxs = (torch.arange(300, device=device) % 3).long()
    torch.library.opcheck(torch.ops.retinaface_ext.batched_nms.default, (boxes, scores, idxs, 0.5))


def test_works_under_torch_compile(boxes_factory):
    boxes, scores = boxes_factory("crowd", 400, seed=4)

    @torch.compile(backend="eager", fullgraph=True)
    def keep_top(boxes, scores):
        return ops.nms(boxes * 2.0, scores, 0.5)

    torch.testing.assert_close(keep_top(boxes, scores), ops.nms(boxes * 2.0, scores, 0.5))


BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
SCORES = torch.tensor([0.9, 0.8])


@pytest.mark.parametrize(
    "boxes, scores, threshold, message",
    [
        (BOXES[:, :3], SCORES, 0.5, r"boxes must have shape \[N, 4\]"),
        (BOXES.flatten(), SCORES, 0.5, r"boxes must have shape \[N, 4\]"),
        (BOXES, SCORES[:1], 0.5, r"scores must have shape \[N\] with N = boxes.shape\[0\] = 2"),
        (BOXES, SCORES[None], 0.5, r"scores must have shape \[N\]"),
        (BOXES.long(), SCORES, 0.5, "boxes must be a floating point tensor"),
        (BOXES.half(), SCORES.half(), 0.5, "boxes on the CPU must be float32 or float64"),
        (BOXES, SCORES.double(), 0.5, "scores must have the dtype of boxes"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), SCORES[:1], 0.5, "boxes contains NaN or inf"),
        (torch.tensor([[0.0, 0.0, float("inf"), 1.0]]), SCORES[:1], 0.5, "boxes contains NaN or inf"),
        (BOXES, torch.tensor([0.5, float("nan")]), 0.5, "scores contains NaN or inf"),
        (BOXES, torch.tensor([0.5, -float("inf")]), 0.5, "scores contains NaN or inf"),
        (BOXES, SCORES, -0.1, "iou_threshold must be a number >= 0"),
        (BOXES, SCORES, float("nan"), "iou_threshold must be a number >= 0"),
    ],
)
def test_bad_input_names_the_argument(boxes, scores, threshold, message):
    with pytest.raises(RuntimeError, match=message):
        ops.nms(boxes, scores, threshold)
    with pytest.raises(RuntimeError, match=message):
        ops.batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.long), threshold)


@pytest.mark.parametrize(
    "idxs, message",
    [
        (torch.zeros(3, dtype=torch.long), r"idxs must have shape \[N\] with N = boxes.shape\[0\] = 2"),
        (torch.zeros(2, 1, dtype=torch.long), r"idxs must have shape \[N\]"),
    ],
)
def test_bad_idxs(idxs, message):
    with pytest.raises(RuntimeError, match=message):
        ops.batched_nms(BOXES, SCORES, idxs, 0.5)


def test_idxs_of_any_integer_dtype_but_not_float():
    for dtype in (torch.int32, torch.int16, torch.uint8, torch.bool):
        torch.testing.assert_close(
            ops.batched_nms(BOXES, SCORES, torch.zeros(2, dtype=dtype), 0.5),
            ops.batched_nms(BOXES, SCORES, torch.zeros(2, dtype=torch.long), 0.5),
        )
    with pytest.raises(TypeError, match="batched_nms: idxs must hold integer categories"):
        ops.batched_nms(BOXES, SCORES, torch.zeros(2), 0.5)


def test_batched_nms_of_nothing_in_any_shape_is_empty(device):
    for boxes in (torch.empty(0, device=device), torch.empty(0, 4, device=device)):
        kept = ops.batched_nms(
            boxes, torch.empty(0, device=device), torch.empty(0, dtype=torch.long, device=device), 0.5
        )
        assert kept.dtype == torch.int64 and kept.shape == (0,) and kept.device == boxes.device
        expected = torchvision.ops.batched_nms(boxes.cpu(), torch.empty(0), torch.empty(0, dtype=torch.long), 0.5)
        assert expected.shape == kept.shape


def test_not_a_tensor_is_named():
    with pytest.raises(TypeError, match="nms: boxes must be a torch.Tensor, got list"):
        ops.nms([[0.0, 0.0, 1.0, 1.0]], SCORES[:1], 0.5)
    with pytest.raises(TypeError, match="batched_nms: idxs must be a torch.Tensor, got list"):
        ops.batched_nms(BOXES, SCORES, [0, 0], 0.5)


@pytest.mark.parametrize("layout", ["column", "wide"])
@pytest.mark.parametrize("n", [300, 5000])
def test_boxes_piled_up_in_x(boxes_factory, device, layout, n):
    """Where the x-sweep degenerates, the kernel scans the score-order tail instead."""
    boxes, scores = boxes_factory(layout, n)
    kept = (
        kernel_reference_torchvision(boxes.to(device), scores.to(device), 0.3, check_torchvision=True)
        if n <= 300
        else ops.nms(boxes.to(device), scores.to(device), 0.3)
    )
    torch.testing.assert_close(kept.cpu(), torchvision.ops.nms(boxes, scores, 0.3), rtol=0, atol=0)
    classes = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(1))
    kept = ops.batched_nms(boxes.to(device), scores.to(device), classes.to(device), 0.3).cpu()
    torch.testing.assert_close(kept, reference.batched_nms(boxes, scores, classes, 0.3), rtol=0, atol=0)
    # torchvision orders equal scores of different classes its own way: compare as sets.
    expected = torchvision.ops.batched_nms(boxes, scores, classes, 0.3)
    torch.testing.assert_close(kept.sort().values, expected.sort().values, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
class TestCUDA:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_half_precision_computes_iou_in_float32(self, boxes_factory, dtype):
        boxes, scores = boxes_factory("crowd", 5000, seed=1, dtype=dtype, device="cuda")
        kernel_reference_torchvision(boxes, scores, 0.5)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("kind", ["crowd", "sparse"])
    def test_half_precision_equals_float32_of_the_rounded_boxes(self, boxes_factory, dtype, kind):
        """A deliberate difference from torchvision, which computes half IoUs in half (and
        its batched NMS offsets half boxes by category, beyond what float16 holds)."""
        boxes, scores = boxes_factory(kind, 5000, seed=2, dtype=dtype, device="cuda")
        idxs = torch.randint(0, 20, (5000,), generator=torch.Generator().manual_seed(2)).to("cuda")
        torch.testing.assert_close(ops.nms(boxes, scores, 0.4), ops.nms(boxes.float(), scores.float(), 0.4))
        torch.testing.assert_close(
            ops.batched_nms(boxes, scores, idxs, 0.4), ops.batched_nms(boxes.float(), scores.float(), idxs, 0.4)
        )

    def test_mismatched_devices(self):
        with pytest.raises(RuntimeError, match="scores must be on the device of boxes"):
            ops.nms(BOXES.cuda(), SCORES, 0.5)
        with pytest.raises(RuntimeError, match="idxs must be on the device of boxes"):
            ops.batched_nms(BOXES.cuda(), SCORES.cuda(), torch.zeros(2, dtype=torch.long), 0.5)

    def test_non_finite_is_reported(self):
        with pytest.raises(RuntimeError, match="boxes contains NaN or inf"):
            ops.nms(torch.tensor([[0.0, 0.0, float("nan"), 1.0]], device="cuda"), SCORES[:1].cuda(), 0.5)
        with pytest.raises(RuntimeError, match="scores contains NaN or inf"):
            ops.nms(BOXES.cuda(), torch.tensor([0.5, float("inf")], device="cuda"), 0.5)

    def test_runs_on_the_current_stream(self, boxes_factory):
        boxes, scores = boxes_factory("sparse", 20000, seed=1, device="cuda")
        expected = ops.nms(boxes, scores, 0.5)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            kept = ops.nms(boxes, scores, 0.5)
        stream.synchronize()
        torch.testing.assert_close(kept, expected)
