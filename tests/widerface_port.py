"""A transcription of the widely used Python port of the WIDER FACE evaluation (as
Pytorch_Retinaface ships it in widerface_evaluate/evaluation.py), loops and all: the
oracle that tests/test_widerface.py compares retinaface_ext.evaluation with.

Only the file reading differs: it walks a retinaface_ext GroundTruth and a dict of
predictions instead of the .mat files and the prediction folder.
"""

import numpy as np


def bbox_overlaps(boxes, query_boxes):
    """The port's Cython box_overlaps ("+1" areas), as loops."""
    n, k = boxes.shape[0], query_boxes.shape[0]
    overlaps = np.zeros((n, k), dtype=np.float64)
    for q in range(k):
        box_area = (query_boxes[q, 2] - query_boxes[q, 0] + 1) * (query_boxes[q, 3] - query_boxes[q, 1] + 1)
        for i in range(n):
            iw = min(boxes[i, 2], query_boxes[q, 2]) - max(boxes[i, 0], query_boxes[q, 0]) + 1
            if iw > 0:
                ih = min(boxes[i, 3], query_boxes[q, 3]) - max(boxes[i, 1], query_boxes[q, 1]) + 1
                if ih > 0:
                    ua = float((boxes[i, 2] - boxes[i, 0] + 1) * (boxes[i, 3] - boxes[i, 1] + 1) + box_area - iw * ih)
                    overlaps[i, q] = iw * ih / ua
    return overlaps


def norm_score(pred):
    max_score, min_score = 0, 1
    for _, v in pred.items():
        if len(v) == 0:
            continue
        min_score = min(np.min(v[:, -1]), min_score)
        max_score = max(np.max(v[:, -1]), max_score)
    diff = max_score - min_score
    for _, v in pred.items():
        if len(v) == 0:
            continue
        v[:, -1] = (v[:, -1] - min_score) / diff


def image_eval(pred, gt, ignore, iou_thresh):
    _pred, _gt = pred.copy(), gt.copy()
    pred_recall = np.zeros(_pred.shape[0])
    recall_list = np.zeros(_gt.shape[0])
    proposal_list = np.ones(_pred.shape[0])
    _pred[:, 2] = _pred[:, 2] + _pred[:, 0]
    _pred[:, 3] = _pred[:, 3] + _pred[:, 1]
    _gt[:, 2] = _gt[:, 2] + _gt[:, 0]
    _gt[:, 3] = _gt[:, 3] + _gt[:, 1]
    overlaps = bbox_overlaps(_pred[:, :4], _gt)
    for h in range(_pred.shape[0]):
        gt_overlap = overlaps[h]
        max_overlap, max_idx = gt_overlap.max(), gt_overlap.argmax()
        if max_overlap >= iou_thresh:
            if ignore[max_idx] == 0:
                recall_list[max_idx] = -1
                proposal_list[h] = -1
            elif recall_list[max_idx] == 0:
                recall_list[max_idx] = 1
        r_keep_index = np.where(recall_list == 1)[0]
        pred_recall[h] = len(r_keep_index)
    return pred_recall, proposal_list


def img_pr_info(thresh_num, pred_info, proposal_list, pred_recall):
    pr_info = np.zeros((thresh_num, 2)).astype("float")
    for t in range(thresh_num):
        thresh = 1 - (t + 1) / thresh_num
        r_index = np.where(pred_info[:, 4] >= thresh)[0]
        if len(r_index) == 0:
            pr_info[t, 0] = 0
            pr_info[t, 1] = 0
        else:
            r_index = r_index[-1]
            p_index = np.where(proposal_list[: r_index + 1] == 1)[0]
            pr_info[t, 0] = len(p_index)
            pr_info[t, 1] = pred_recall[r_index]
    return pr_info


def dataset_pr_info(thresh_num, pr_curve, count_face):
    _pr_curve = np.zeros((thresh_num, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(thresh_num):
            _pr_curve[i, 0] = pr_curve[i, 1] / pr_curve[i, 0]
            _pr_curve[i, 1] = pr_curve[i, 1] / count_face
    return _pr_curve


def voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def evaluation(pred, ground_truth, iou_thresh=0.5, thresh_num=1000):
    """pred: {image name: [N, 5] x, y, w, h, score}, sorted by decreasing score as the
    prediction files are written. Returns {setting: AP}."""
    pred = {k: np.array(v, dtype=np.float64) for k, v in pred.items()}
    norm_score(pred)
    aps = {}
    for setting in ("easy", "medium", "hard"):
        count_face = 0
        pr_curve = np.zeros((thresh_num, 2)).astype("float")
        for image in ground_truth.images:
            pred_info = pred[image.name]
            gt_boxes = image.boxes.astype("float")
            keep_index = image.keep[setting] + 1  # the .mat lists are 1-based
            count_face += len(keep_index)
            if len(gt_boxes) == 0 or len(pred_info) == 0:
                continue
            ignore = np.zeros(gt_boxes.shape[0])
            if len(keep_index) != 0:
                ignore[keep_index - 1] = 1
            pred_recall, proposal_list = image_eval(pred_info, gt_boxes, ignore, iou_thresh)
            pr_curve += img_pr_info(thresh_num, pred_info, proposal_list, pred_recall)
        pr_curve = dataset_pr_info(thresh_num, pr_curve, count_face)
        aps[setting] = voc_ap(pr_curve[:, 1], pr_curve[:, 0])
    return aps
