"""ONNX export of RetinaFace at any input size, DCN included.

:func:`to_onnx` writes one of two graphs:

- the network (``postprocess=False``): input ``images [batch, 3, height, width]`` float32,
  BGR minus (104, 117, 123) as the Detector feeds it; outputs ``loc [batch, priors, 4]``,
  ``logits [batch, priors, 2]`` (background, face) and ``landmarks [batch, priors, 10]``,
  what :class:`~retinaface_ext.RetinaFace` returns, in the priors' order of
  :func:`~retinaface_ext.priors.prior_boxes` for (height, width). BatchNorm is folded
  and each level's three heads are one convolution.
- detection (``postprocess=True``): input ``images [batch, 3, height, width]`` float32,
  BGR in 0..255 (the mean is subtracted inside); outputs exactly what
  :func:`retinaface_ext.ops.detect_faces` returns (:data:`DETECTION_OUTPUTS`):
  ``boxes [faces, 4]`` x1, y1, x2, y2 in the input's pixels, ``scores [faces]``,
  ``landmarks [faces, 10]`` and ``counts [batch]`` (int64), by image, each image best
  first: priors for the input size, decoding, top-k and ONNX ``NonMaxSuppression`` in the
  graph (:func:`~retinaface_ext.export.graph.detect_faces_onnx`), so a deployment needs
  no Python. Files written before 0.2 returned ``landmarks [faces, 5, 2]`` and
  ``image_index [faces]`` instead of ``counts``; export again to get the one contract.

Batch, height and width are dynamic unless ``dynamic=False``; the FPN's upsampling
becomes a ``Resize`` driven by the sizes of the maps it merges. Deformable convolutions
become ONNX ``DeformConv`` (opset 19 and later) with both of torch's exporters; the
post-processing graph needs the torch.export-based one (the default).

:func:`to_pt2` writes an AOTInductor package (``.pt2``) of the network or of the network
with our ``detect_faces`` op: the same :class:`~retinaface_ext.export.graph.DetectionGraph`
and the same outputs.
"""

from .exporter import EXPORTERS, ExportReport, to_onnx
from .graph import DETECTION_OUTPUTS, NETWORK_INPUTS, NETWORK_OUTPUTS, DetectionGraph, detect_faces_onnx
from .pt2 import Pt2Report, to_pt2
from .pt2_files import UntrustedPackage, load_pt2

__all__ = [
    "to_onnx",
    "to_pt2",
    "load_pt2",
    "UntrustedPackage",
    "Pt2Report",
    "ExportReport",
    "DetectionGraph",
    "detect_faces_onnx",
    "NETWORK_INPUTS",
    "NETWORK_OUTPUTS",
    "DETECTION_OUTPUTS",
    "EXPORTERS",
]
