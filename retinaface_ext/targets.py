"""The face row of training targets, ``[G, 15]``: x1, y1, x2, y2; the (x, y) of the left
eye, right eye, nose, left and right mouth corners; the label (1: a face with landmarks,
-1: one without). The one home of that layout, as the seed's WiderFaceDetection builds
it: label files, transforms, batches, the loss and the commands read rows through these
names."""

WIDTH = 15
BOX = slice(0, 4)
LANDMARKS = slice(4, 14)
LABEL = 14


def split_rows(rows):
    """``rows [..., 15]`` as ``(boxes [..., 4], labels [...], landmarks [..., 10])``."""
    return rows[..., BOX], rows[..., LABEL], rows[..., LANDMARKS]
