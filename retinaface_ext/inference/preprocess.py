"""Pre-processing, as Pytorch_Retinaface's detect.py does it: BGR pixels minus the model's
mean, optionally resized by the WIDER FACE test protocol's rule, in the layout the network
reads."""

import os
from typing import NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .. import ops
from ..images import (
    MAX_DECODED_PIXELS,
    MAX_PIXELS,
    ImageLike,
    check_size,
    decode_image,
    display_path,
    read_image,
    resize_factor,
    resized_shape,
    to_bgr_tensor,
)


class Prepared(NamedTuple):
    tensor: torch.Tensor  # [3, h, w] network input (mean subtracted, resized)
    factor: float  # resize factor
    image_size: Tuple[int, int]  # (height, width) of the original image


def check_level_size(height: int, width: int, factor: float, scale: float, name: str) -> Tuple[int, int]:
    """The network input size of a level ``scale`` times larger than ``factor`` makes an
    ``height x width`` image; ValueError naming ``scales`` when it exceeds MAX_PIXELS."""
    size = resized_shape(height, width, factor * scale)
    if size[0] * size[1] > MAX_PIXELS:
        raise ValueError(
            f"{name}: scales: {scale:g} makes {size[0]}x{size[1]} network pixels, more than this "
            f"detector takes ({MAX_PIXELS}); ask for smaller scales or pass max_size"
        )
    return size


class Preprocessing:
    """Images to network inputs on ``device``: minus ``mean_bgr``; resized so that the
    short side is ``target_size`` unless the long side would exceed ``max_size`` (either
    may be None); channels-last for a network that reads it, else NCHW planes."""

    def __init__(
        self,
        device: torch.device,
        mean_bgr,
        channels_last: bool,
        target_size: Optional[float] = None,
        max_size: Optional[float] = None,
    ):
        self.device, self.mean_bgr, self.channels_last = device, tuple(float(m) for m in mean_bgr), channels_last
        self.target_size, self.max_size = check_size(target_size, "target_size"), check_size(max_size, "max_size")
        self._mean = torch.tensor(self.mean_bgr, device=device).reshape(3, 1, 1)
        #: The largest level scale asked for (:class:`~.levels.LevelSettings`): images
        #: whose level at that scale would exceed MAX_PIXELS are refused from their header.
        self.largest_scale = 1.0

    def read_image(self, path: Union[str, os.PathLike], name: Optional[str] = None):
        """An image file as OpenCV reads it (BGR), refused from its header, before
        decoding, when its size would be refused."""
        name = name or display_path(path)
        return read_image(path, MAX_DECODED_PIXELS, lambda height, width: self.check_input_size(height, width, name))

    def decode_image(self, data: bytes, name: str = "image"):
        """Encoded image bytes decoded (BGR) as :meth:`read_image` reads a file, refused
        from their header, before decoding, when their size would be refused."""
        return decode_image(
            data, name, MAX_DECODED_PIXELS, lambda height, width: self.check_input_size(height, width, name)
        )

    def network_size(self, height: int, width: int) -> Tuple[float, Tuple[int, int]]:
        """The resize factor and network input size (height, width) of an image."""
        if self.target_size is None and self.max_size is None:
            return 1.0, (int(height), int(width))
        factor = resize_factor(height, width, self.target_size, self.max_size)
        return factor, resized_shape(height, width, factor)

    def check_input_size(self, height: int, width: int, name: str) -> Tuple[float, Tuple[int, int]]:
        """The resize factor and network input size of an image, or ValueError naming it
        when that input would exceed MAX_PIXELS."""
        factor, size = self.network_size(height, width)
        if size[0] * size[1] > MAX_PIXELS:
            raise ValueError(
                f"{name}: {size[0]}x{size[1]} pixels is more than this detector takes "
                f"({MAX_PIXELS}); pass max_size to shrink large images"
            )
        if self.largest_scale != 1.0:
            check_level_size(height, width, factor, self.largest_scale, name)
        return factor, size

    def prepare(self, image: ImageLike, name: str = "image", color: str = "bgr") -> Prepared:
        """The pre-processing of one image, as the Detector does it: its network input
        (``[3, h, w]`` float32, mean subtracted, resized), the resize factor and the
        image's own size. ``name`` is what errors call it."""
        source = self.source(image, name, color)
        if source.factor == 1.0:
            return source
        size = resized_shape(*source.image_size, source.factor)
        tensor = F.interpolate(source.tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        return Prepared(tensor, source.factor, source.image_size)

    def source(self, image: ImageLike, name: str = "image", color: str = "bgr") -> Prepared:
        """One image minus the mean, at its own size, with the factor it is resized by:
        what :meth:`level` resizes, crops and mirrors."""
        if isinstance(image, (str, os.PathLike)):
            image = self.read_image(image, f"{name} ({display_path(image)})")
        tensor = to_bgr_tensor(image, name, self.device, color)
        height, width = tensor.shape[-2:]
        factor, _ = self.check_input_size(height, width, name)
        return Prepared(self._subtract_mean(tensor), factor, (int(height), int(width)))

    def level(self, source: Prepared, level, name: str = "image") -> Prepared:
        """The network input of one :class:`~.levels.Level` of an image (its
        :meth:`source`): the level's region, mirrored if it says so, resized by the
        image's factor times the level's scale. ValueError naming ``scales`` when that
        input would exceed MAX_PIXELS."""
        tensor, (height, width) = source.tensor, source.image_size
        if level.crop is not None:
            x1, y1, x2, y2 = level.crop
            tensor, height, width = tensor[:, y1:y2, x1:x2], y2 - y1, x2 - x1
        if level.flip:
            tensor = tensor.flip(-1)
        factor = source.factor * level.scale
        size = check_level_size(height, width, source.factor, level.scale, name)
        if factor != 1.0:
            tensor = F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]
        return Prepared(tensor, factor, (height, width))

    def network_input(self, image: ImageLike, color: str = "bgr") -> torch.Tensor:
        """One image's batch ``[1, 3, h, w]`` as the network takes it (its memory layout
        included): what the network runs on, for timing the stages apart."""
        tensor = self.prepare(image, color=color).tensor[None]
        return tensor.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def _subtract_mean(self, image: torch.Tensor) -> torch.Tensor:
        """Float32 ``image - mean`` in one pass, in the layout the network reads: for an
        HWC array seen as ``[3, H, W]``, channels-last (the mean laid along whole rows, so
        that the loop runs over rows, not triples) or, for a network that reads NCHW
        (the onnxruntime engine), written straight into planes by
        :func:`~retinaface_ext.ops.image_planes`, serially: torch's parallel loops here
        measurably slowed the onnxruntime forward right after them (shared cores)."""
        _, height, width = image.shape
        if not self.channels_last:
            if image.stride() == (1, 3 * width, 3):  # HWC memory: our one-pass kernel, on this thread
                return ops.image_planes(image.permute(1, 2, 0), self.mean_bgr)
            return torch.sub(image, self._mean).to(torch.float32).contiguous()
        if image.stride() == (1, 3 * width, 3):
            rows = image.permute(1, 2, 0).reshape(height, 3 * width)
            centred = torch.sub(rows, self._mean.reshape(1, 3).repeat(1, width))
            return centred.to(torch.float32).view(height, width, 3).permute(2, 0, 1)
        return torch.sub(image, self._mean).to(torch.float32)
