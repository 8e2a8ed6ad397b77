"""Turning what users pass as images (paths, OpenCV arrays, tensors, PIL images) into BGR
tensors, with errors that say which image is wrong and why."""

import io
import os
import stat
import warnings
from typing import Callable, List, Optional, Tuple, Union

import cv2
import numpy as np
import torch

ImageLike = Union[str, os.PathLike, np.ndarray, torch.Tensor, "PIL.Image.Image"]  # noqa: F821

#: Images larger than this (after resizing) are refused: pass ``max_size`` to shrink them.
MAX_PIXELS = 64 * 1024 * 1024
#: Image files declaring more pixels than this (400 MB as BGR) are not decoded at all,
#: whatever the resizing: their size is read from the file's header first.
MAX_DECODED_PIXELS = 128 * 1024 * 1024

COLOR_ORDERS = ("bgr", "rgb")
EXIF_ORIENTATION = 0x0112


#: The file names folder runs and WIDER FACE prediction take as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: Union[str, os.PathLike], recursive: bool = False) -> Tuple[List[str], str]:
    """The image files under ``path`` (a file: itself) and the folder their names are
    relative to. In a folder, every entry with an image extension is listed, sorted,
    whatever it is (a FIFO, a dangling link): reading it says what is wrong with it.
    FileNotFoundError or ValueError naming ``path`` when there is nothing to read."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path], os.path.dirname(path)
    if not os.path.isdir(path):
        if os.path.lexists(path):
            raise ValueError(f"{display_path(path)}: neither an image file nor a folder")
        raise FileNotFoundError(f"no such image or folder: {display_path(path)}")
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not recursive:
            break
    if not found:
        raise ValueError(f"{display_path(path)}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found, path


def display_path(path: Union[str, bytes, os.PathLike]) -> str:
    """A file name as errors and logs show it: bytes that are not UTF-8 (a name from
    another system, ``bad\\xff.jpg``) escaped, so that printing it never fails."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def opencv_path(path: Union[str, os.PathLike], what: str = "file") -> str:
    """``path`` as OpenCV's path functions take it: they crash the process on a name that
    is not UTF-8, so such a name is a ValueError here instead."""
    path = os.fspath(path)
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{display_path(path)}: OpenCV cannot open a {what} whose name is not UTF-8; rename it"
        ) from None
    return path


def open_regular_file(path: Union[str, os.PathLike], what: str = "image"):
    """``path`` opened for reading in binary, only when it is a regular file: a FIFO,
    device or socket is refused (reading one would wait forever or never end), checked
    on the opened file itself. FileNotFoundError or ValueError naming the file."""
    shown = display_path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        kind = " (a link to a missing file)" if os.path.islink(path) else ""
        raise FileNotFoundError(f"{what} not found: {shown}{kind}") from None
    except IsADirectoryError:
        raise ValueError(f"{shown}: is a folder, not a regular file") from None
    except OSError as error:
        raise ValueError(f"{shown}: cannot be opened ({error.strerror or type(error).__name__})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise ValueError(f"{shown}: is {_file_kind(mode)}, not a regular file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def image_file_size(path: Union[str, os.PathLike]) -> Optional[Tuple[int, int]]:
    """(height, width) of an image file from its header, without decoding the pixels:
    Pillow reads the headers of most formats, and the Radiance HDR and PFM headers, which
    OpenCV decodes and Pillow does not, are read here. None when OpenCV cannot decode the
    file either. ValueError for a file beyond Pillow's decompression-bomb limit (above
    ours), for one that OpenCV would decode but whose size cannot be read (its header
    could declare any number of pixels), and for one that is not a regular file."""
    with open_regular_file(path) as handle:
        return _header_size(handle, display_path(path))


def _header_size(handle, shown: str, on_disk: bool = True) -> Optional[Tuple[int, int]]:
    """(height, width) from the header of the opened file or BytesIO ``handle``; for bytes
    (``on_disk`` False) there is no file to ask OpenCV whether it knows the format."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as image:
                width, height = image.size
        return height, width
    except Image.DecompressionBombError as error:
        raise ValueError(f"{shown}: too many pixels to decode ({error})") from None
    except Exception:  # unknown to Pillow, or broken
        pass
    handle.seek(0)
    size = _radiance_or_pfm_size(handle.read(1 << 16))
    if size is None and on_disk and _opencv_has_reader(handle):
        raise ValueError(
            f"{shown}: its format does not tell its size in a header read here, so it is not "
            f"decoded; save it as PNG or JPEG"
        )
    return size


def _opencv_has_reader(handle) -> bool:
    """Whether OpenCV knows the format of the opened file, asked through the descriptor's
    own path where the system has one (any file name works there)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return bool(cv2.haveImageReader(f"{folder}/{handle.fileno()}"))
    try:
        return bool(cv2.haveImageReader(opencv_path(handle.name)))
    except (ValueError, TypeError):
        return False


def _radiance_or_pfm_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) from a Radiance HDR header (``#?...`` lines, a blank line, then
    ``-Y H +X W`` or another axis order) or a PFM one (``PF``/``Pf``, ``W H``)."""
    if head.startswith((b"PF", b"Pf")):
        fields = head[2:].split(maxsplit=2)[:2]
        numbers = [int(f) for f in fields if f.isdigit()]
        return (numbers[1], numbers[0]) if len(numbers) == 2 else None
    if not head.startswith(b"#?"):
        return None
    end = head.find(b"\n\n")
    fields = head[end + 2 :].split(b"\n", 1)[0].split() if end >= 0 else []
    if len(fields) != 4 or fields[0][1:] not in (b"X", b"Y") or not (fields[1].isdigit() and fields[3].isdigit()):
        return None
    first, second = int(fields[1]), int(fields[3])
    return (first, second) if fields[0][1:] == b"Y" else (second, first)


def read_image(
    path: Union[str, os.PathLike],
    max_pixels: int = MAX_DECODED_PIXELS,
    check_size: Optional[Callable[[int, int], object]] = None,
) -> np.ndarray:
    """An image file as OpenCV reads it: ``[H, W, 3]`` uint8 BGR (grayscale and alpha
    images are converted, the EXIF orientation applied). Raises FileNotFoundError or
    ValueError naming the file; only a regular file is opened, and one whose header
    declares more than ``max_pixels`` pixels (or that ``check_size(height, width)``
    refuses by raising) is not decoded. The bytes are read here and decoded from memory,
    so file names of any bytes work."""
    shown = display_path(path)
    with open_regular_file(path) as handle:
        _check_declared_size(_header_size(handle, shown), shown, max_pixels, check_size)
        handle.seek(0)
        data = np.frombuffer(handle.read(), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file: {shown}")
    return image


def decode_image(
    data: bytes,
    name: str = "image",
    max_pixels: int = MAX_DECODED_PIXELS,
    check_size: Optional[Callable[[int, int], object]] = None,
) -> np.ndarray:
    """Encoded image bytes (a file's content) decoded as :func:`read_image` decodes a
    file, with the same checks of the header's size before decoding; bytes whose size no
    header read here tells are refused (there is no file to ask OpenCV about). ValueError
    naming ``name``."""
    size = _header_size(io.BytesIO(data), name, on_disk=False)
    if size is None:
        raise ValueError(f"cannot decode image: {name} (not an image format whose size its header tells)")
    _check_declared_size(size, name, max_pixels, check_size)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image: {name}")
    return image


def _check_declared_size(size, shown: str, max_pixels: int, check_size) -> None:
    if size is None:
        return
    if check_size is not None:
        check_size(*size)
    if size[0] * size[1] > max_pixels:
        raise ValueError(f"{shown}: the file declares {size[0]}x{size[1]} pixels, more than {max_pixels} (not decoded)")


def _is_pil_image(image) -> bool:
    return type(image).__module__.startswith("PIL.") and hasattr(image, "convert") and hasattr(image, "mode")


def _pil_pixels(image, name: str) -> np.ndarray:
    """A PIL image as a writable uint8 array (RGB or gray). 16-bit gray images are
    scaled to 8 bits as OpenCV reads 16-bit files (divided by 256); Pillow's own
    conversion would saturate them at 255. An EXIF orientation is applied, as OpenCV
    applies it to a file (a phone's portrait photo is stored sideways)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # as OpenCV reads a file: upright
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return np.clip(np.rint(np.asarray(image).astype(np.float32) / 256), 0, 255).astype(np.uint8)
    if image.mode in ("I", "F"):
        raise ValueError(
            f"{name}: a PIL image of mode {image.mode!r} (32-bit values) has no set range; "
            f"convert it to 'L' or 'RGB' first"
        )
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return np.array(image)


def to_bgr_tensor(image: ImageLike, name: str = "image", device=None, color: str = "bgr") -> torch.Tensor:
    """``[3, H, W]`` BGR values 0..255 on ``device`` (float32, or uint8 when the input is).

    Accepts a path; a numpy array ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]``
    (alpha dropped); a tensor ``[H, W]`` or ``[C, H, W]`` with C in 1, 3, 4; a PIL image.
    Arrays and tensors hold BGR (OpenCV's order) unless ``color="rgb"`` (what PIL,
    torchvision's ``decode_image`` and most other libraries give); PIL images are always
    RGB. Gray images are repeated into three channels. Arrays from numpy stay in their HWC
    memory, which is channels-last for the network.
    """
    if color not in COLOR_ORDERS:
        raise ValueError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
        color = "bgr"
    elif _is_pil_image(image):
        image, color = _pil_pixels(image, name), "rgb"
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"{name}: numpy images must be uint8 or floating point (0..255), got {image.dtype}")
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3:
            raise ValueError(f"{name}: expected an [H, W, C] array, got shape {list(image.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 and not image.is_floating_point():
            raise ValueError(f"{name}: tensor images must be uint8 or floating point (0..255), got {image.dtype}")
        tensor = image[None] if image.dim() == 2 else image
        if tensor.dim() != 3:
            raise ValueError(f"{name}: expected a [C, H, W] tensor, got shape {list(image.shape)}")
    else:
        raise TypeError(f"{name}: expected a path, a numpy array, a tensor or a PIL image, got {type(image).__name__}")

    channels, height, width = tensor.shape
    if height == 0 or width == 0:
        raise ValueError(f"{name}: empty image ({height}x{width})")
    if channels == 1:
        tensor = tensor.expand(3, height, width)
    elif channels == 4:
        tensor = tensor[:3]
    elif channels != 3:
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got {channels} (shape {list(tensor.shape)})")
    if color == "rgb" and channels != 1:
        tensor = tensor.flip(0)
    if tensor.is_floating_point():
        if tensor.dtype != torch.float32:
            tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name}: the image holds NaN or infinite values")
    return tensor if device is None or tensor.device == torch.device(device) else tensor.to(device, non_blocking=True)


def check_size(value, name: str) -> Optional[float]:
    """``target_size`` and ``max_size``: None or a positive finite number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return value


def resize_factor(height: int, width: int, target_size=None, max_size=None) -> float:
    """The WIDER FACE test protocol's scale: the short side to ``target_size``, unless the
    long side would then exceed ``max_size`` (rounded), in which case the long side to
    ``max_size``. Either may be None: no target keeps the scale at 1 unless too large."""
    target_size, max_size = check_size(target_size, "target_size"), check_size(max_size, "max_size")
    factor = 1.0 if target_size is None else float(target_size) / min(height, width)
    if max_size is not None and round(factor * max(height, width)) > max_size:
        factor = float(max_size) / max(height, width)
    return factor


def resized_shape(height: int, width: int, factor: float) -> Tuple[int, int]:
    """The network input size of an ``height x width`` image scaled by ``factor``."""
    return max(1, round(height * factor)), max(1, round(width * factor))
