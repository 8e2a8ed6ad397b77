"""Writing files so that a failure never leaves a half-written file or reports success:
every write goes to a temporary file beside the target, is flushed to disk, then renamed
over it; errors propagate as OSError naming the path."""

import os
from typing import Union

PathLike = Union[str, os.PathLike]


def atomic_write_bytes(path: PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` all at once: readers see the old file or the new one,
    never a part. ``durable`` also fsyncs it before the rename (a crash then keeps one
    of the two whole). Parent folders are created."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path: PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def write_image(path: PathLike, image) -> None:
    """An OpenCV BGR image, encoded in the format its extension names, written atomically;
    a format OpenCV cannot write raises OSError."""
    import cv2

    path = os.fspath(path)
    extension = os.path.splitext(path)[1] or ".jpg"
    try:
        ok, encoded = cv2.imencode(extension, image)
    except cv2.error:
        ok = False
    if not ok:
        raise OSError(f"cannot encode an image as {extension!r} for {path}")
    atomic_write_bytes(path, encoded.tobytes())


def cache_root() -> str:
    """Where retinaface_ext keeps what it makes once and reuses (the synthetic face set,
    exported ONNX graphs): ``$RETINAFACE_EXT_CACHE``, else ``$XDG_CACHE_HOME/retinaface_ext``
    or ``~/.cache/retinaface_ext``."""
    return os.environ.get("RETINAFACE_EXT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "retinaface_ext"
    )
