"""Pure-PyTorch references of every kernel op: same signatures, same semantics.

Short and obviously right rather than fast; the tests compare the kernels with them.
They run on any device and need no compiled code.
"""

import math

import torch


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] x1y1x2y2 -> [N]; a degenerate box (x2 < x1 or y2 < y1) has zero area."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: boxes [N, 4] x1y1x2y2, scores [N] -> int64 kept indices.

    Kept indices come in decreasing score order, equal scores lower index first; a box
    is dropped when its IoU with a kept box is strictly greater than ``iou_threshold``
    (compared in float64, like torchvision). float16/bfloat16 are computed in float32.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    area = _box_area(boxes)
    suppressed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = boxes[i + 1 :]
        wh = (torch.minimum(boxes[i, 2:], rest[:, 2:]) - torch.maximum(boxes[i, :2], rest[:, :2])).clamp(min=0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / (area[i] + area[i + 1 :] - inter)
        for j in torch.nonzero(iou.double() > iou_threshold).flatten().tolist():
            suppressed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS per category ``idxs`` [N]; kept indices of all categories in decreasing score
    order (equal scores: lower index first)."""
    keep = [
        members[nms(boxes[members], scores[members], iou_threshold)]
        for members in (torch.nonzero(idxs == c).flatten() for c in torch.unique(idxs))
    ]
    if not keep:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    keep = torch.sort(torch.cat(keep)).values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def box_vote(boxes, scores, landmarks, idxs, iou_threshold):
    """Box voting (insightface's ``bbox_vote``) per category ``idxs`` [N]: in decreasing
    score order (equal scores: lower index first), each box not yet taken heads a group:
    itself and the boxes not yet taken, of its category, whose IoU with it is at least
    ``iou_threshold``. A group becomes one detection: its box and ``landmarks`` [N, D]
    the score-weighted mean of the group's (its head's where the scores sum to 0), its
    score the head's (the group's highest). Returns boxes [K, 4], scores [K],
    landmarks [K, D], idxs [K], by category (ascending) and within one best first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(idxs[order], stable=True).indices]
    iou = box_iou(boxes, boxes)
    taken = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    out = {"boxes": [], "scores": [], "landmarks": [], "idxs": []}
    for i in order.tolist():
        if taken[i]:
            continue
        group = ~taken & (idxs == idxs[i]) & (iou[i] >= iou_threshold)
        group[i] = True  # itself, even where its IoU is NaN (an empty box)
        taken |= group
        weights = scores[group]
        total = weights.sum()
        if total > 0:
            box = (boxes[group] * weights[:, None]).sum(0) / total
            points = (landmarks[group] * weights[:, None]).sum(0) / total
        else:
            box, points = boxes[i], landmarks[i]
        out["boxes"].append(box)
        out["scores"].append(scores[i])
        out["landmarks"].append(points)
        out["idxs"].append(idxs[i])
    if not out["boxes"]:
        return boxes[:0], scores[:0], landmarks[:0], idxs[:0]
    return tuple(torch.stack(out[key]) for key in ("boxes", "scores", "landmarks", "idxs"))


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of x1y1x2y2 boxes: [N, 4] x [M, 4] -> [N, M], or [B, N, 4] x [B, M, 4] -> [B, N, M].

    Areas are (x2 - x1) * (y2 - y1), as in torchvision and Pytorch_Retinaface's jaccard.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[..., None, :] - inter)


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """Priors [..., 4] cx, cy, w, h -> x1, y1, x2, y2."""
    return torch.cat([priors[..., :2] - priors[..., 2:] / 2, priors[..., :2] + priors[..., 2:] / 2], -1)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Boxes [..., P, 4] x1y1x2y2 matched to priors [P, 4] cx,cy,w,h -> offsets [..., P, 4]."""
    centre = (matched[..., :2] + matched[..., 2:]) / 2 - priors[:, :2]
    centre = centre / (variances[0] * priors[:, 2:])
    size = (matched[..., 2:] - matched[..., :2]) / priors[:, 2:]
    return torch.cat([centre, torch.log(size) / variances[1]], -1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Offsets [..., P, 4] against priors [P, 4] cx,cy,w,h -> boxes [..., P, 4] x1y1x2y2."""
    centre = priors[:, :2] + loc[..., :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variances[1])
    corner = centre - size / 2
    return torch.cat([corner, size + corner], -1)


def encode_landm(matched: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Landmarks [..., P, 10] (5 x, y pairs) -> offsets [..., P, 10] against priors [P, 4]."""
    points = matched.reshape(*matched.shape[:-1], 5, 2)
    offsets = (points - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])
    return offsets.reshape(matched.shape)


def decode_landm(pred: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """Offsets [..., P, 10] against priors [P, 4] -> landmarks [..., P, 10] (5 x, y pairs)."""
    offsets = pred.reshape(*pred.shape[:-1], 5, 2)
    points = priors[:, None, :2] + offsets * variances[0] * priors[:, None, 2:]
    return points.reshape(pred.shape)


def match(truths, labels, landmarks, num_truths, priors, threshold=0.35, variances=(0.1, 0.2)):
    """Training targets for a batch, each image exactly as Pytorch_Retinaface's match().

    Args:
        truths: [B, G, 4] x1y1x2y2 (normalised); rows past num_truths[b] are padding.
        labels: [B, G] int64, 1 for a face with landmarks, -1 for one without.
        landmarks: [B, G, 10] five (x, y) points.
        num_truths: [B] int64, the real truths of each image.
        priors: [P, 4] cx, cy, w, h.

    Returns:
        loc_t [B, P, 4], conf_t [B, P] int64, landm_t [B, P, 10]. An image none of whose
        truths reaches IoU 0.2 with any prior gets all-zero targets.
    """
    B, G, _ = truths.shape
    P = priors.shape[0]
    loc_t = truths.new_zeros(B, P, 4)
    conf_t = torch.zeros(B, P, dtype=torch.long, device=truths.device)
    landm_t = truths.new_zeros(B, P, 10)
    if G == 0 or P == 0:
        return loc_t, conf_t, landm_t
    valid = torch.arange(G, device=truths.device) < num_truths[:, None]  # [B, G]
    overlaps = box_iou(truths, point_form(priors).expand(B, P, 4))  # [B, G, P]
    overlaps = overlaps.masked_fill(~valid[..., None], -1.0)  # padding never wins
    best_prior_overlap, best_prior = overlaps.max(2)  # [B, G]: each truth's best prior
    best_truth_overlap, best_truth = overlaps.max(1)  # [B, P]: each prior's best truth
    forced = valid & (best_prior_overlap >= 0.2)
    has_targets = forced.any(1)
    image = torch.arange(B, device=truths.device)[:, None].expand(B, G)
    best_truth_overlap[image[forced], best_prior[forced]] = 2.0
    for g in range(G):  # in order, so that a later truth wins a shared best prior
        images = torch.nonzero(valid[:, g]).flatten()
        best_truth[images, best_prior[images, g]] = g
    matched = torch.gather(truths, 1, best_truth[..., None].expand(B, P, 4))
    conf = torch.gather(labels, 1, best_truth)
    conf[best_truth_overlap < threshold] = 0
    matched_landmarks = torch.gather(landmarks, 1, best_truth[..., None].expand(B, P, 10))
    keep = has_targets[:, None, None]
    loc_t = torch.where(keep, encode(matched, priors, variances), loc_t)
    landm_t = torch.where(keep, encode_landm(matched_landmarks, priors, variances), landm_t)
    conf_t = torch.where(keep[..., 0], conf, conf_t)
    return loc_t, conf_t, landm_t


def decode_detections(loc, conf, landm, priors, variances=(0.1, 0.2), score_threshold=0.02):
    """Decodes every prior, then keeps those whose face score conf[..., 1] > score_threshold.

    Returns boxes [K, 4], scores [K], landmarks [K, 10], image_index [K], prior_index [K],
    in image-then-prior order, in the priors' normalised coordinates.
    """
    boxes = decode(loc, priors, variances)
    landmarks = decode_landm(landm, priors, variances)
    scores = conf[..., 1]
    image, prior = torch.nonzero(scores > score_threshold, as_tuple=True)
    return boxes[image, prior], scores[image, prior], landmarks[image, prior], image, prior


def detect_faces(
    loc,
    logits,
    landm,
    priors,
    canvas_size,
    inside=None,
    factor=None,
    variances=(0.1, 0.2),
    score_threshold=0.02,
    top_k=5000,
    nms_threshold=0.4,
    keep_top_k=750,
):
    """The faces of a batch, image by image: softmax face scores, candidates above the
    threshold decoded into pixels (times the canvas size, divided by ``factor[b]``), the
    ``top_k`` best through NMS, the first ``keep_top_k`` kept. Returns boxes [K, 4],
    scores [K], landmarks [K, 10] by image then score, and counts [B] (-1: face scores
    not finite, -2: a candidate not finite; such an image keeps nothing)."""
    height, width = canvas_size
    face = torch.sigmoid(logits[..., 1] - logits[..., 0])  # = softmax(logits)[..., 1]
    face = face if inside is None else face * inside
    conf = torch.stack([1 - face, face], dim=-1)
    out = {
        "boxes": [loc.new_zeros((0, 4))],
        "scores": [loc.new_zeros((0,))],
        "landmarks": [loc.new_zeros((0, 10))],
        "counts": [],
    }
    for b in range(loc.shape[0]):
        boxes, scores, landmarks, _, _ = decode_detections(
            loc[b : b + 1], conf[b : b + 1], landm[b : b + 1], priors, variances, score_threshold
        )
        boxes = boxes * torch.tensor([width, height] * 2, dtype=boxes.dtype, device=boxes.device)
        landmarks = landmarks * torch.tensor([width, height] * 5, dtype=landmarks.dtype, device=landmarks.device)
        if factor is not None:
            boxes, landmarks = boxes / factor[b], landmarks / factor[b]
        if not bool(torch.isfinite(face[b]).all()):
            count, keep = -1, []
        elif not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(landmarks).all())):
            count, keep = -2, []
        else:
            best = torch.sort(scores, descending=True, stable=True).indices[:top_k]
            keep = best[nms(boxes[best], scores[best], nms_threshold)][:keep_top_k]
            count = len(keep)
        keep = torch.as_tensor(keep, dtype=torch.long, device=loc.device)
        out["boxes"].append(boxes[keep])
        out["scores"].append(scores[keep])
        out["landmarks"].append(landmarks[keep])
        out["counts"].append(count)
    counts = torch.tensor(out["counts"], dtype=torch.long, device=loc.device)
    return torch.cat(out["boxes"]), torch.cat(out["scores"]), torch.cat(out["landmarks"]), counts


def image_planes(image, mean):
    """Channels-last pixels [..., H, W, C] -> float32 planes [..., C, H, W] minus ``mean`` [C]."""
    planes = image.movedim(-1, -3).to(torch.float32)
    return planes - torch.tensor(mean, dtype=torch.float32, device=image.device)[:, None, None]


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _bilinear_gather(input, y, x, groups):
    """Samples input [N, C, H, W] at (y, x) [N, groups, *S] with bilinear weights and zeros
    outside the image; channels are split into ``groups`` consecutive blocks, block g
    sampled at (y[:, g], x[:, g]). Returns [N, C, *S]."""
    N, C, H, W = input.shape
    spatial = y.shape[2:]
    points = math.prod(spatial)
    values = input.reshape(N, groups, C // groups, H * W)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    out = 0
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
            # NaN coordinates read pixel 0 (their weight is NaN): no undefined integer cast.
            index = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).nan_to_num(0).long()
            index = index.reshape(N, groups, 1, points)
            sampled = torch.gather(values, 3, index.expand(N, groups, C // groups, points))
            weight = (wy * wx * inside).reshape(N, groups, 1, points)
            out = out + sampled * weight
    return out.reshape(N, C, *spatial)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Modulated deformable convolution (DCNv2; DCNv1 when mask is None), as
    torchvision.ops.deform_conv2d: same signature, offset layout and border rule.

    Args:
        input: [N, C, H, W]. weight: [O, C / groups, kh, kw] (groups = C / weight.shape[1]).
        offset: [N, 2 * offset_groups * kh * kw, Ho, Wo]; for each offset group and kernel
            point (row-major), (dy, dx).
        mask: [N, offset_groups * kh * kw, Ho, Wo] or None. bias: [O] or None.

    Kernel point (a, b) of output (i, j) samples input at y = i * stride - padding +
    a * dilation + dy (x likewise) by bilinear interpolation, with zeros outside the
    image, and is multiplied by its mask value. Differentiable by autograd.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = input.shape
    O, channels_per_group, kh, kw = weight.shape
    groups, K = C // channels_per_group, kh * kw
    offset_groups = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[2:]
    device, dtype = input.device, input.dtype
    ky = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)  # [K]
    kx = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    oy = torch.arange(Ho, device=device, dtype=dtype) * sh - ph
    ox = torch.arange(Wo, device=device, dtype=dtype) * sw - pw
    shifts = offset.reshape(N, offset_groups, K, 2, Ho, Wo)
    y = oy[:, None] + ky[:, None, None] + shifts[:, :, :, 0]  # [N, og, K, Ho, Wo]
    x = ox[None, :] + kx[:, None, None] + shifts[:, :, :, 1]
    columns = _bilinear_gather(input, y, x, offset_groups)  # [N, C, K, Ho, Wo]
    if mask is not None:
        modulation = mask.reshape(N, offset_groups, 1, K, Ho, Wo)
        columns = columns.reshape(N, offset_groups, C // offset_groups, K, Ho, Wo) * modulation
    columns = columns.reshape(N, groups, channels_per_group * K, Ho * Wo)
    out = torch.einsum("gok,ngkl->ngol", weight.reshape(groups, O // groups, channels_per_group * K), columns)
    out = out.reshape(N, O, Ho, Wo)
    return out if bias is None else out + bias[:, None, None]
