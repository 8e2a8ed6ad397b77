"""The multibox loss of RetinaFace (the seed's MultiBoxLoss), on one batched ops.match."""

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .targets import WIDTH, split_rows

Targets = Union[Sequence[torch.Tensor], Tuple[torch.Tensor, ...]]


def pad_targets(targets: Sequence[torch.Tensor], device=None):
    """The seed's list of ``[G_i, 15]`` tensors as ``(truths [B, G, 4], labels [B, G],
    landmarks [B, G, 10], num_truths [B])``, what :func:`retinaface_ext.ops.match` takes."""
    rows = []
    for index, target in enumerate(targets):
        target = torch.as_tensor(target, dtype=torch.float32, device=device)
        if target.numel() == 0:
            target = target.reshape(0, WIDTH)
        if target.dim() != 2 or target.shape[1] != WIDTH:
            raise ValueError(
                f"MultiBoxLoss: targets[{index}] must be [G, 15] (x1 y1 x2 y2, ten landmark "
                f"values, label), got {list(target.shape)}"
            )
        rows.append(target)
    padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True) if rows else torch.zeros(0, 0, WIDTH)
    counts = torch.tensor([len(r) for r in rows], dtype=torch.long).to(padded.device, non_blocking=True)
    truths, labels, landmarks = split_rows(padded)
    return truths, labels.long(), landmarks, counts


class MultiBoxLoss(nn.Module):
    """The seed's ``MultiBoxLoss``: ``forward((loc, conf, landm), priors, targets)``
    returns ``(loss_l, loss_c, loss_landm)``.

    - ``loss_l``: smooth L1 between ``loc [B, P, 4]`` and the encoded matched boxes, over
      the positive priors (matched to a face, with or without landmarks).
    - ``loss_c``: softmax cross-entropy of ``conf [B, P, 2]`` over the positives and the
      hardest negatives of each image: the ``neg_pos * positives + extra_negatives``
      (at most P - 1) background priors of highest loss. The ``+ 200`` is the seed's, so
      that an image without faces still teaches the background.
    - ``loss_landm``: smooth L1 of ``landm [B, P, 10]`` over the positives whose face has
      landmarks (label 1).

    ``loss_l`` and ``loss_c`` are divided by the number of positives in the batch,
    ``loss_landm`` by the number with landmarks (each at least 1). Targets come from one
    :func:`retinaface_ext.ops.match` call for the whole batch, and nothing here waits for
    the device: no per-image loop, no ``.item()``, no boolean indexing.

    ``targets`` is the seed's list of ``[G_i, 15]`` tensors (x1 y1 x2 y2, ten landmark
    values, label; in [0, 1]), a :class:`retinaface_ext.data.Batch`, or the tuple
    ``(truths, labels, landmarks, num_truths)``. :meth:`total` weighs the parts as training
    does: ``loc_weight * loss_l + loss_c + loss_landm``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        overlap_thresh: float = 0.35,
        neg_pos: int = 7,
        variances: Sequence[float] = (0.1, 0.2),
        extra_negatives: int = 200,
        loc_weight: float = 2.0,
    ):
        super().__init__()
        if num_classes != 2:
            raise ValueError(
                f"MultiBoxLoss: RetinaFace has 2 classes (background, face), got num_classes={num_classes}"
            )
        if not 0 < overlap_thresh <= 1:
            raise ValueError(f"MultiBoxLoss: overlap_thresh must be in (0, 1], got {overlap_thresh}")
        if neg_pos < 0 or extra_negatives < 0:
            raise ValueError(
                f"MultiBoxLoss: neg_pos and extra_negatives must be >= 0, got {neg_pos}, {extra_negatives}"
            )
        self.num_classes, self.threshold, self.neg_pos = num_classes, float(overlap_thresh), neg_pos
        self.variances = tuple(float(v) for v in variances)
        self.extra_negatives, self.loc_weight = extra_negatives, float(loc_weight)

    def forward(self, predictions, priors: torch.Tensor, targets) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sum_l, sum_c, sum_landm, num_positive, num_landmarks = self.sums(predictions, priors, targets)
        divisor = num_positive.clamp(min=1).to(sum_l.dtype)
        return sum_l / divisor, sum_c / divisor, sum_landm / num_landmarks.clamp(min=1).to(sum_l.dtype)

    def sums(self, predictions, priors: torch.Tensor, targets):
        """The three losses before their division, and the two divisors (positives, and
        positives with landmarks; 0-dim tensors, not yet at least 1). Several processes
        that share a batch add up their divisors before dividing (see the trainer)."""
        loc, conf, landm = (_at_least_float32(p) for p in predictions)  # half types (autocast) in float32
        _check_predictions(loc, conf, landm, priors)
        truths, labels, landmarks, num_truths = self._padded(targets, loc.device)
        if truths.shape[0] != loc.shape[0]:
            raise ValueError(f"MultiBoxLoss: {loc.shape[0]} images of predictions but {truths.shape[0]} of targets")
        with torch.no_grad():
            loc_t, conf_t, landm_t = ops.match(
                truths.float(),
                labels,
                landmarks.float(),
                num_truths,
                priors.float(),
                self.threshold,
                self.variances,
                check=False,
            )
        positive = conf_t != 0
        with_landmarks = conf_t > 0
        num_positive = positive.sum(1, keepdim=True)
        sum_l = _masked_sum(F.smooth_l1_loss(loc, loc_t.to(loc.dtype), reduction="none"), positive)
        sum_landm = _masked_sum(F.smooth_l1_loss(landm, landm_t.to(landm.dtype), reduction="none"), with_landmarks)
        cross_entropy = F.cross_entropy(conf.flatten(0, 1), positive.flatten().long(), reduction="none")
        cross_entropy = cross_entropy.view(positive.shape)
        hardest = self._hard_negatives(cross_entropy.detach(), positive, num_positive)
        sum_c = torch.where(positive | hardest, cross_entropy, 0).sum()
        return sum_l, sum_c, sum_landm, num_positive.sum(), with_landmarks.sum()

    def total(self, losses: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss_l, loss_c, loss_landm = losses
        return self.loc_weight * loss_l + loss_c + loss_landm

    def _hard_negatives(self, cross_entropy, positive, num_positive):
        """Per image, the priors ranked among its ``num_neg`` highest background losses
        (positives count as 0, as the seed zeroes them before ranking)."""
        mining = cross_entropy.masked_fill(positive, 0)
        order = mining.argsort(1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
        )
        num_negative = (self.neg_pos * num_positive + self.extra_negatives).clamp(max=positive.shape[1] - 1)
        return rank < num_negative

    @staticmethod
    def _padded(targets, device):
        if hasattr(targets, "num_truths"):  # a retinaface_ext.data.Batch
            targets = (targets.truths, targets.labels, targets.landmarks, targets.num_truths)
        if isinstance(targets, tuple) and len(targets) == 4 and targets[0].dim() == 3:
            return tuple(t.to(device) for t in targets)
        return pad_targets(list(targets), device)


def _check_predictions(loc, conf, landm, priors) -> None:
    if priors.dim() != 2 or priors.shape[1] != 4:
        raise ValueError(f"MultiBoxLoss: priors must be [P, 4], got {list(priors.shape)}")
    expected = {"loc": 4, "conf": 2, "landm": 10}
    for name, value in zip(expected, (loc, conf, landm)):
        if value.dim() != 3 or value.shape[1:] != (priors.shape[0], expected[name]) or value.shape[0] != loc.shape[0]:
            raise ValueError(
                f"MultiBoxLoss: {name} must be [B, P, {expected[name]}] with P = {priors.shape[0]} "
                f"priors, got {list(value.shape)}"
            )


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``values [B, P, K]`` over the priors where ``mask [B, P]``."""
    return torch.where(mask[..., None], values, 0).sum()


__all__: List[str] = ["MultiBoxLoss", "pad_targets"]
