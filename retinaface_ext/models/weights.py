"""Published RetinaFace weights by name: where they can be downloaded, how they are checked,
and the folder they are kept in.

``Detector("mobilenet0.25")``, ``RetinaFace.from_checkpoint("resnet50")`` and
``retinaface detect --weights NAME`` (the default is ``mobilenet0.25``) come here through
:func:`retinaface_ext.models.read_state_dict` (:mod:`.loading`). A name is looked up in :data:`PUBLISHED`;
its file is read from :func:`weights_folder` when it is there (no network), else
downloaded from the first address that works, to a temporary file beside the target,
checked, then renamed into place. Nothing unchecked is ever left in the folder.

What is checked is the weights, not the file's bytes: :func:`tensors_digest` hashes the
tensors' names, dtypes, shapes and values, so a copy pickled again (facexlib's, for one,
stores the tensors under ``module.``) checks equal when its tensors are the same.
``num_batches_tracked`` counters are left out: they change no output and the published
files do not all have them.
"""

import dataclasses
import hashlib
import math
import os
import time
import urllib.error
import urllib.request
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..files import cache_root
from .checkpoint import describe, read_checkpoint

#: Replaces every entry's addresses by ``<this>/<file name>`` (a mirror of the files).
MIRROR_VARIABLE = "RETINAFACE_EXT_WEIGHTS_URL"
CHUNK = 1 << 20
#: A download gives up after this many seconds in all, every address it tries together
#: (a server that trickles bytes never trips the 30 s one read may wait);
#: ``$RETINAFACE_EXT_DOWNLOAD_SECONDS`` sets another.
DOWNLOAD_SECONDS = 900.0
READ_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint: ``file_name`` in the weights folder, the addresses it is
    served from (tried in order), the digest of its tensors (None: not pinned, see
    ``note``) and an upper bound on its size."""

    name: str
    backbone: str
    file_name: str
    urls: Tuple[str, ...]
    digest: Optional[str]
    max_bytes: int
    note: str = ""


PUBLISHED: Dict[str, PublishedWeights] = {
    entry.name: entry
    for entry in (
        PublishedWeights(
            name="mobilenet0.25",
            backbone="mobilenet0.25",
            file_name="mobilenet0.25_Final.pth",
            urls=(
                "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
                "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
            ),
            # Taken from Pytorch_Retinaface's mobilenet0.25_Final.pth (file SHA-256 2979b33f...5a65220).
            digest="00d7b7660e10e76d903cf5bbdc502fc1b9730090ad8658fe5cdc4300a4ab1d51",
            max_bytes=16 << 20,
            note="Pytorch_Retinaface's MobileNet-0.25 RetinaFace (MIT), mirrored in facexlib's and "
            "CodeFormer's v0.1.0 releases",
        ),
        PublishedWeights(
            name="resnet50",
            backbone="resnet50",
            file_name="Resnet50_Final.pth",
            urls=(
                "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
                "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/detection_Resnet50_Final.pth",
                "https://huggingface.co/licyk/sd-upscaler-models/resolve/main/GFPGAN/detection_Resnet50_Final.pth",
            ),
            digest=None,
            max_bytes=256 << 20,
            note="Pytorch_Retinaface's ResNet-50 RetinaFace (MIT). Its digest is not pinned: no copy was "
            "at hand to take it from, so a download is checked for the ResNet-50 RetinaFace's tensor "
            "names and shapes and finite values only, and says so",
        ),
    )
}


class WeightsUnavailable(OSError):
    """Published weights that are not in the weights folder and could not be downloaded."""


def weights_folder() -> str:
    """Where published weights are kept: ``$RETINAFACE_EXT_HOME/weights``, else
    ``weights`` in the cache folder (:func:`retinaface_ext.files.cache_root`)."""
    home = os.environ.get("RETINAFACE_EXT_HOME")
    return os.path.join(home, "weights") if home else os.path.join(cache_root(), "weights")


def published(name: str) -> PublishedWeights:
    if name not in PUBLISHED:
        raise ValueError(f"no published weights are called {name!r} (known: {', '.join(PUBLISHED)})")
    return PUBLISHED[name]


def is_published_name(checkpoint) -> bool:
    """True for a registry name that is not also an existing path (a file wins)."""
    return isinstance(checkpoint, str) and checkpoint in PUBLISHED and not os.path.exists(checkpoint)


def cached_path(name: str) -> str:
    return os.path.join(weights_folder(), published(name).file_name)


def addresses(name: str) -> Tuple[str, ...]:
    entry = published(name)
    mirror = os.environ.get(MIRROR_VARIABLE)
    return (f"{mirror.rstrip('/')}/{entry.file_name}",) if mirror else entry.urls


def tensors_digest(state_dict: Dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors by sorted name: each name, dtype, shape and raw values
    (``num_batches_tracked`` left out)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key.endswith("num_batches_tracked"):
            continue
        value = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_weights(name: str, state_dict: Dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless ``state_dict`` holds the published weights ``name``; for an
    entry without a digest, check that it is that backbone's RetinaFace and warn."""
    entry = published(name)
    if entry.digest is not None:
        found = tensors_digest(state_dict)
        if found != entry.digest:
            raise ValueError(
                f"{source} does not hold the published {name} weights (tensor digest {found[:16]}..., "
                f"expected {entry.digest[:16]}...)"
            )
        return
    backbone, _ = describe(state_dict, source)
    if backbone != entry.backbone:
        raise ValueError(f"{source} holds {backbone} weights, not the published {name} ({entry.backbone})")
    warnings.warn(
        f"{source}: the {name} weights have no pinned digest; only their backbone was checked (names and "
        "shapes are checked when a model loads them)",
        stacklevel=3,
    )


def fetch(name: str, progress: bool = True) -> str:
    """The path of the published weights ``name``, checked: the file in the weights
    folder, downloaded first when missing. A file there that fails the check is an error
    naming it (it is not replaced behind the user's back)."""
    load_published(name, progress)
    return cached_path(name)


def load_published(name: str, progress: bool = True) -> Dict[str, torch.Tensor]:
    """The tensors of the published weights ``name`` (see :func:`fetch`)."""
    path = cached_path(name)
    if not os.path.isfile(path):
        return read_checkpoint(download(name, progress=progress))  # checked on the way in
    state_dict = read_checkpoint(path)
    try:
        check_weights(name, state_dict, path)
    except ValueError as error:
        raise ValueError(f"{error}; delete it to download the weights again") from None
    return state_dict


def download_seconds() -> float:
    text = os.environ.get("RETINAFACE_EXT_DOWNLOAD_SECONDS")
    if text is None:
        return DOWNLOAD_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"the environment variable RETINAFACE_EXT_DOWNLOAD_SECONDS={text!r} is not a number > 0")
    return seconds


def download(
    name: str, urls: Optional[Sequence[str]] = None, progress: bool = True, seconds: Optional[float] = None
) -> str:
    """Download the published weights ``name`` into the weights folder (or return the
    file already there) and return its path. Each address in turn: streamed to a
    temporary file, bounded in size and in time (``seconds`` for all the addresses, default
    :func:`download_seconds`), read with ``weights_only=True``, checked
    (:func:`check_weights`), then renamed into place. Raises WeightsUnavailable naming
    every address tried and the path where a file downloaded by hand is picked up."""
    seconds = download_seconds() if seconds is None else float(seconds)
    deadline = time.monotonic() + seconds
    target = cached_path(name)
    if os.path.isfile(target):
        return target
    entry = published(name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    failures = []
    for url in urls or addresses(name):
        temporary = os.path.join(os.path.dirname(target), f".{entry.file_name}.{os.getpid()}.part")
        try:
            _fetch(url, temporary, entry, progress, deadline, seconds)
            check_weights(name, read_checkpoint(temporary), url)
            os.replace(temporary, target)
            return target
        except (OSError, ValueError) as error:
            failures.append(f"{url} ({_reason(error)})")
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    raise WeightsUnavailable(
        f"{name}: the weights could not be downloaded from {'; '.join(failures)}. "
        f"Download {entry.file_name} by hand from one of these addresses and save it as {target}"
    )


def _fetch(url: str, path: str, entry: PublishedWeights, progress: bool, deadline: float, seconds: float) -> None:
    if not url.startswith(("https://", "http://")):
        raise ValueError("only http and https addresses are fetched")
    from tqdm import tqdm

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"not tried: the {seconds:g} s for the download were spent")
    request = urllib.request.Request(url, headers={"User-Agent": "retinaface_ext"})
    with urllib.request.urlopen(request, timeout=min(READ_SECONDS, left)) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > entry.max_bytes:
            raise ValueError(f"it announces {total} bytes, more than the {entry.max_bytes} expected")
        received = 0
        with (
            open(path, "wb") as handle,
            tqdm(total=total, unit="B", unit_scale=True, desc=entry.name, disable=not progress, leave=False) as bar,
        ):
            while chunk := response.read1(CHUNK):  # what one read brings: the deadline is checked often
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the download took more than {seconds:g} s ({received} bytes received)")
                received += len(chunk)
                if received > entry.max_bytes:
                    raise ValueError(f"it sent more than the {entry.max_bytes} bytes expected")
                handle.write(chunk)
                bar.update(len(chunk))
            handle.flush()
            os.fsync(handle.fileno())
        if total is not None and received != total:
            raise ValueError(f"the download stopped after {received} of {total} bytes")


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error).splitlines()[0] if str(error) else type(error).__name__
