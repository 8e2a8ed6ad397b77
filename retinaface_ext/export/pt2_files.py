"""Loading ``.pt2`` packages safely. A package is a program: its shared library runs native
code the moment it is loaded (a constructor needs no call), so a package is read as data
first, and loaded only when it may run:

1. it is a regular file and a zip archive whose every entry name stays inside the folder
   it is extracted to (no absolute path, no ``..``, no backslash, no link), of a bounded
   size;
2. its metadata (a JSON entry beside the library, read without loading it) says it is one
   of ours, for the torch that runs here;
3. this installation built it (:func:`to_pt2` records the SHA-256 of each package it
   writes, in ``<cache>/pt2/built/``) or the caller trusts it (``trust=True``);
4. torch's loader extracts it into a folder of our own, removed when the package is freed
   or the load fails.
"""

import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import weakref
import zipfile
from pathlib import PurePosixPath, PureWindowsPath
from typing import Dict, Tuple, Union

import torch

from ..files import atomic_write_bytes, cache_root
from ..images import display_path, open_regular_file

#: The bytes a package may hold once extracted (a MobileNet-0.25 one holds about 4 MB,
#: a ResNet-50 one about 110 MB).
MAX_EXTRACTED_BYTES = 4 << 30
METADATA_SUFFIX = "_metadata.json"
_loading = threading.Lock()


class UntrustedPackage(ValueError):
    """A package this installation did not build, loaded without ``trust=True``."""


def file_digest(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open_regular_file(path, "package") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def built_folder() -> str:
    return os.path.join(cache_root(), "pt2", "built")


def record_built(digest: str) -> None:
    """Remember that this installation built the package of SHA-256 ``digest``."""
    atomic_write_bytes(os.path.join(built_folder(), digest), b"", durable=False)


def built_here(digest: str) -> bool:
    return os.path.isfile(os.path.join(built_folder(), digest))


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The metadata of the package at ``path``, read as data (nothing of it runs), after
    checking its entries. ValueError naming the file for anything else."""
    shown = display_path(path)
    with open_regular_file(path, "package") as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise ValueError(f"{shown}: not a loadable AOTInductor package (not a zip archive)") from None
        with archive:
            entries = archive.infolist()
            for entry in entries:
                _check_entry(entry, shown)
            total = sum(entry.file_size for entry in entries)
            if total > MAX_EXTRACTED_BYTES:
                raise ValueError(f"{shown}: it would extract to {total} bytes, more than {MAX_EXTRACTED_BYTES}")
            found = [e for e in entries if e.filename.endswith(METADATA_SUFFIX) and "/aotinductor/" in e.filename]
            if not found:
                raise ValueError(f"{shown}: not a loadable AOTInductor package (no metadata inside)")
            try:
                metadata = json.loads(archive.read(found[0]))
            except (ValueError, zipfile.BadZipFile, OSError):
                raise ValueError(f"{shown}: not a loadable AOTInductor package (unreadable metadata)") from None
    if not isinstance(metadata, dict) or "retinaface_ext.outputs" not in metadata:
        raise ValueError(f"{shown}: not a RetinaFace package made by retinaface_ext.export.to_pt2")
    return {str(key): str(value) for key, value in metadata.items()}


def _check_entry(entry: zipfile.ZipInfo, shown: str) -> None:
    name = entry.filename
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    unsafe = (
        posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or "\\" in name
        or "\0" in name
        or ".." in posix.parts
        or stat.S_ISLNK(entry.external_attr >> 16)
    )
    if unsafe:
        raise ValueError(f"{shown}: refused: its entry {name!r} would be extracted outside the package's folder")


def load_pt2(path: Union[str, os.PathLike], device_index: int = -1, trust: bool = False) -> Tuple[object, dict]:
    """An AOTInductor package made by :func:`~retinaface_ext.export.to_pt2`, loaded, and
    its metadata: (callable, dict).

    Loading runs the package's native code, so it is checked first (see this module):
    a package this installation did not build raises :class:`UntrustedPackage` unless
    ``trust=True``. Raises ValueError naming the file when it is not a package of ours,
    was made for another torch, or does not load; FileNotFoundError when it is missing."""
    from .. import _extension

    _extension.require()  # our ops must be registered before the package resolves them
    shown = display_path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{shown}: no such .pt2 package")
    metadata = read_metadata(path)
    made_for = metadata.get("retinaface_ext.torch")
    if made_for is not None and made_for != torch.__version__:
        raise ValueError(f"{shown}: the package was made for torch {made_for}, this is torch {torch.__version__}")
    if not trust and not built_here(file_digest(path)):
        raise UntrustedPackage(
            f"{shown}: not built by this installation; a .pt2 package is a program (its native code runs as it "
            "loads), so load it only from a source you trust: Detector(..., trust_package=True) or --trust-package"
        )
    return _load(os.fspath(path), shown, device_index), metadata


def _load(path: str, shown: str, device_index: int):
    """torch's loader, extracting into a folder of ours: torch's own extraction folder is
    left in the temporary directory when a load fails. The loader takes the folder from
    TMPDIR when it extracts, so TMPDIR points into ours for that moment."""
    folder = tempfile.mkdtemp(prefix="retinaface-pt2-")
    with _loading:
        previous = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = folder
        try:
            package = torch._inductor.aoti_load_package(path, device_index=device_index)
            package.get_metadata()
        except Exception as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise ValueError(f"{shown}: not a loadable AOTInductor package ({_first_line(error)})") from None
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
    weakref.finalize(package, shutil.rmtree, folder, True)
    return package


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
