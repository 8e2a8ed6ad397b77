"""Transcriptions of the reference code (Pytorch_Retinaface, as the seed document walks
through it): the oracles that the tests and benchmarks compare our ops with.

Kept deliberately close to the original, loops and all; not part of the package.
"""

from itertools import product
from math import ceil

import numpy as np
import torch

VARIANCES = [0.1, 0.2]


def prior_box_oracle(image_size, min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32), clip=False):
    """A transcription of Pytorch_Retinaface's PriorBox.forward (Python loops)."""
    feature_maps = [[ceil(image_size[0] / step), ceil(image_size[1] / step)] for step in steps]
    anchors = []
    for k, f in enumerate(feature_maps):
        for i, j in product(range(f[0]), range(f[1])):
            for min_size in min_sizes[k]:
                s_kx = min_size / image_size[1]
                s_ky = min_size / image_size[0]
                dense_cx = [x * steps[k] / image_size[1] for x in [j + 0.5]]
                dense_cy = [y * steps[k] / image_size[0] for y in [i + 0.5]]
                for cy, cx in product(dense_cy, dense_cx):
                    anchors += [cx, cy, s_kx, s_ky]
    output = torch.Tensor(anchors).view(-1, 4)
    if clip:
        output.clamp_(max=1, min=0)
    return output


def seed_point_form(boxes):
    return torch.cat((boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2), 1)


def seed_intersect(box_a, box_b):
    A, B = box_a.size(0), box_b.size(0)
    max_xy = torch.min(box_a[:, 2:].unsqueeze(1).expand(A, B, 2), box_b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = torch.max(box_a[:, :2].unsqueeze(1).expand(A, B, 2), box_b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = torch.clamp((max_xy - min_xy), min=0)
    return inter[:, :, 0] * inter[:, :, 1]


def seed_jaccard(box_a, box_b):
    inter = seed_intersect(box_a, box_b)
    area_a = ((box_a[:, 2] - box_a[:, 0]) * (box_a[:, 3] - box_a[:, 1])).unsqueeze(1).expand_as(inter)
    area_b = ((box_b[:, 2] - box_b[:, 0]) * (box_b[:, 3] - box_b[:, 1])).unsqueeze(0).expand_as(inter)
    union = area_a + area_b - inter
    return inter / union


def seed_encode(matched, priors, variances):
    g_cxcy = (matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]
    g_cxcy /= variances[0] * priors[:, 2:]
    g_wh = (matched[:, 2:] - matched[:, :2]) / priors[:, 2:]
    g_wh = torch.log(g_wh) / variances[1]
    return torch.cat([g_cxcy, g_wh], 1)


def seed_encode_landm(matched, priors, variances):
    matched = torch.reshape(matched, (matched.size(0), 5, 2))
    priors_cx = priors[:, 0].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_cy = priors[:, 1].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_w = priors[:, 2].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors_h = priors[:, 3].unsqueeze(1).expand(matched.size(0), 5).unsqueeze(2)
    priors = torch.cat([priors_cx, priors_cy, priors_w, priors_h], dim=2)
    g_cxcy = matched[:, :, :2] - priors[:, :, :2]
    g_cxcy /= variances[0] * priors[:, :, 2:]
    return g_cxcy.reshape(g_cxcy.size(0), -1)


def seed_match(threshold, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx):
    overlaps = seed_jaccard(truths, seed_point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    valid_gt_idx = best_prior_overlap[:, 0] >= 0.2
    best_prior_idx_filter = best_prior_idx[valid_gt_idx, :]
    if best_prior_idx_filter.shape[0] <= 0:
        loc_t[idx] = 0
        conf_t[idx] = 0
        return
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_idx_filter.squeeze_(1)
    best_prior_overlap.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx]
    conf[best_truth_overlap < threshold] = 0
    loc = seed_encode(matches, priors, variances)
    matches_landm = landms[best_truth_idx]
    landm = seed_encode_landm(matches_landm, priors, variances)
    loc_t[idx] = loc
    conf_t[idx] = conf
    landm_t[idx] = landm


def seed_batch(truths, labels, landms, num_truths, priors, threshold=0.35):
    """The seed's per-image loop over a padded batch (landm_t zero where it leaves it unset)."""
    B, P = truths.shape[0], priors.shape[0]
    loc_t = torch.zeros(B, P, 4, dtype=truths.dtype)
    conf_t = torch.zeros(B, P, dtype=torch.long)
    landm_t = torch.zeros(B, P, 10, dtype=truths.dtype)
    for b in range(B):
        n = int(num_truths[b])
        seed_match(
            threshold,
            truths[b, :n],
            priors,
            VARIANCES,
            labels[b, :n].to(truths.dtype),
            landms[b, :n],
            loc_t,
            conf_t,
            landm_t,
            b,
        )
    return loc_t, conf_t, landm_t


def seed_decode(loc, priors, variances):
    """Pytorch_Retinaface's box_utils.decode."""
    boxes = torch.cat(
        (
            priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
            priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1]),
        ),
        1,
    )
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def seed_decode_landm(pre, priors, variances):
    """Pytorch_Retinaface's box_utils.decode_landm."""
    return torch.cat(
        (
            priors[:, :2] + pre[:, :2] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 2:4] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 4:6] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 6:8] * variances[0] * priors[:, 2:],
            priors[:, :2] + pre[:, 8:10] * variances[0] * priors[:, 2:],
        ),
        dim=1,
    )


def py_cpu_nms(dets, thresh):
    """Pytorch_Retinaface's py_cpu_nms: greedy NMS in numpy with "+1" box areas.
    dets: [N, 5] x1, y1, x2, y2, score."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def pytorch_retinaface_detect(
    net, img_raw, confidence_threshold=0.02, top_k=5000, nms_threshold=0.4, keep_top_k=750, resize=1
):
    """Pytorch_Retinaface's detect.py for one image, from the decoded BGR array to the
    ``[K, 15]`` rows (box, score, landmarks), on the device of ``net`` as detect.py's
    ``.to(device)`` calls put it. ``net`` returns (loc, logits, landmarks)."""
    device = next(net.parameters()).device
    img = np.float32(img_raw)
    im_height, im_width, _ = img.shape
    scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    img -= (104, 117, 123)
    img = img.transpose(2, 0, 1)
    img = torch.from_numpy(img).unsqueeze(0)
    img = img.to(device)
    scale = scale.to(device)
    with torch.no_grad():
        loc, conf, landms = net(img)
        conf = torch.nn.functional.softmax(conf, dim=-1)
    prior_data = prior_box_oracle((im_height, im_width)).to(device)
    boxes = seed_decode(loc.data.squeeze(0), prior_data, VARIANCES)
    boxes = boxes * scale / resize
    boxes = boxes.cpu().numpy()
    scores = conf.squeeze(0).data.cpu().numpy()[:, 1]
    landms = seed_decode_landm(landms.data.squeeze(0), prior_data, VARIANCES)
    scale1 = torch.Tensor([img.shape[3], img.shape[2]] * 5).to(device)
    landms = (landms * scale1 / resize).cpu().numpy()
    inds = np.where(scores > confidence_threshold)[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1][:top_k]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, nms_threshold)
    dets, landms = dets[keep, :], landms[keep]
    dets, landms = dets[:keep_top_k, :], landms[:keep_top_k, :]
    return np.concatenate((dets, landms), axis=1)


class SeedWiderFaceDetection(torch.utils.data.Dataset):
    """The seed's ``WiderFaceDetection`` (data/wider_face.py), as the seed gives it; the
    images folder is passed in rather than derived from the label path."""

    def __init__(self, txt_path, images_dir, preproc=None):
        import os

        self.preproc = preproc
        self.imgs_path = []
        self.words = []
        f = open(txt_path, "r")
        lines = f.readlines()
        isFirst = True
        labels = []
        for line in lines:
            line = line.rstrip()
            if line.startswith("#"):
                if isFirst is True:
                    isFirst = False
                else:
                    labels_copy = labels.copy()
                    self.words.append(labels_copy)
                    labels.clear()
                path = line[2:]
                path = os.path.join(images_dir, path)
                self.imgs_path.append(path)
            else:
                line = line.split(" ")
                label = [float(x) for x in line]
                labels.append(label)
        self.words.append(labels)

    def __len__(self):
        return len(self.imgs_path)

    def __getitem__(self, index):
        import cv2

        img = cv2.imread(self.imgs_path[index])
        labels = self.words[index]
        annotations = np.zeros((0, 15))
        if len(labels) == 0:
            return annotations
        for _, label in enumerate(labels):  # as the seed writes it
            annotation = np.zeros((1, 15))
            annotation[0, 0] = label[0]  # x1
            annotation[0, 1] = label[1]  # y1
            annotation[0, 2] = label[0] + label[2]  # x2
            annotation[0, 3] = label[1] + label[3]  # y2
            annotation[0, 4] = label[4]  # l0_x
            annotation[0, 5] = label[5]  # l0_y
            annotation[0, 6] = label[7]  # l1_x
            annotation[0, 7] = label[8]  # l1_y
            annotation[0, 8] = label[10]  # l2_x
            annotation[0, 9] = label[11]  # l2_y
            annotation[0, 10] = label[13]  # l3_x
            annotation[0, 11] = label[14]  # l3_y
            annotation[0, 12] = label[16]  # l4_x
            annotation[0, 13] = label[17]  # l4_y
            if annotation[0, 4] < 0:
                annotation[0, 14] = -1
            else:
                annotation[0, 14] = 1
            annotations = np.append(annotations, annotation, axis=0)
        target = np.array(annotations)
        if self.preproc is not None:
            img, target = self.preproc(img, target)
        return torch.from_numpy(img), target


def seed_detection_collate(batch):
    """Pytorch_Retinaface's detection_collate: stacked images, a list of target tensors."""
    targets = []
    imgs = []
    for _, sample in enumerate(batch):
        for _, tup in enumerate(sample):
            if torch.is_tensor(tup):
                imgs.append(tup)
            elif isinstance(tup, type(np.empty(0))):
                annos = torch.from_numpy(tup).float()
                targets.append(annos)
    return (torch.stack(imgs, 0), targets)


def seed_log_sum_exp(x):
    x_max = x.data.max()
    return torch.log(torch.sum(torch.exp(x - x_max), 1, keepdim=True)) + x_max


class SeedMultiBoxLoss(torch.nn.Module):
    """The seed's MultiBoxLoss.forward, with its per-image ``match`` loop; its ``.cuda()``
    calls move the targets to the predictions' device; ``landm_t`` starts at zero instead of
    uninitialised."""

    def __init__(self, num_classes=2, overlap_thresh=0.35, neg_pos=7):
        super().__init__()
        self.num_classes = num_classes
        self.threshold = overlap_thresh
        self.negpos_ratio = neg_pos
        self.variance = [0.1, 0.2]

    def forward(self, predictions, priors, targets):
        import torch.nn.functional as F

        loc_data, conf_data, landm_data = predictions
        num = loc_data.size(0)
        num_priors = priors.size(0)
        loc_t = torch.Tensor(num, num_priors, 4)
        landm_t = torch.zeros(num, num_priors, 10)
        conf_t = torch.LongTensor(num, num_priors)
        for idx in range(num):
            truths = targets[idx][:, :4].data
            labels = targets[idx][:, -1].data
            landms = targets[idx][:, 4:14].data
            defaults = priors.data
            seed_match(self.threshold, truths, defaults, self.variance, labels, landms, loc_t, conf_t, landm_t, idx)
        device = loc_data.device
        loc_t = loc_t.to(device)
        conf_t = conf_t.to(device)
        landm_t = landm_t.to(device)
        zeros = torch.tensor(0, device=device)
        pos1 = conf_t > zeros
        num_pos_landm = pos1.long().sum(1, keepdim=True)
        N1 = max(num_pos_landm.data.sum().float(), 1)
        pos_idx1 = pos1.unsqueeze(pos1.dim()).expand_as(landm_data)
        landm_p = landm_data[pos_idx1].view(-1, 10)
        landm_t = landm_t[pos_idx1].view(-1, 10)
        loss_landm = F.smooth_l1_loss(landm_p, landm_t, reduction="sum")

        pos = conf_t != zeros
        conf_t[pos] = 1

        pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
        loc_p = loc_data[pos_idx].view(-1, 4)
        loc_t = loc_t[pos_idx].view(-1, 4)
        loss_l = F.smooth_l1_loss(loc_p, loc_t, reduction="sum")

        batch_conf = conf_data.view(-1, self.num_classes)
        loss_c = seed_log_sum_exp(batch_conf) - batch_conf.gather(1, conf_t.view(-1, 1))

        loss_c[pos.view(-1, 1)] = 0
        loss_c = loss_c.view(num, -1)
        _, loss_idx = loss_c.sort(1, descending=True)
        _, idx_rank = loss_idx.sort(1)
        num_pos = pos.long().sum(1, keepdim=True)
        num_neg = torch.clamp(self.negpos_ratio * num_pos + 200, max=pos.size(1) - 1)
        neg = idx_rank < num_neg.expand_as(idx_rank)
        pos_idx = pos.unsqueeze(2).expand_as(conf_data)
        neg_idx = neg.unsqueeze(2).expand_as(conf_data)
        conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, self.num_classes)
        targets_weighted = conf_t[(pos + neg).gt(0)]
        loss_c = F.cross_entropy(conf_p, targets_weighted, reduction="sum")

        N = max(num_pos.data.sum().float(), 1)
        loss_l /= N
        loss_c /= N
        loss_landm /= N1
        return loss_l, loss_c, loss_landm
