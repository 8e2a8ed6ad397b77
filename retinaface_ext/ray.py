"""Face detection as a Ray Data stage, for runs over more images than one machine holds.

:class:`DetectFaces` is a callable class for ``Dataset.map_batches``: each actor builds one
:class:`~retinaface_ext.inference.Detector` and runs it over whole batches (mixed sizes share
padded passes), and each image becomes one row of :data:`SCHEMA`, ready for Parquet or JSON.
:func:`detect_to_parquet` is what ``retinaface detect SOURCE --ray --parquet OUT`` runs:
listing, skipping what OUT holds, the stage, and part files written whole.

Ray is an optional dependency (``pip install "retinaface_ext[ray]"``); ``import
retinaface_ext`` never imports it, and neither does this module until a stage runs.
"""

import os
import time
import uuid
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ._version import __version__
from .images import IMAGE_EXTENSIONS

INSTALL_HINT = 'pip install "retinaface_ext[ray]" (or pip install "ray[data]")'
#: The schema's metadata key: a Parquet file without it is not ours.
SCHEMA_KEY = b"retinaface_ext.faces"
#: The driver writes a part file when it holds this many rows (and at the end).
ROWS_PER_PART = 1024
#: The least images per call of the stage in a command's pipeline (:func:`images_per_call`).
IMAGES_PER_CALL = 64


def schema():
    """The rows of :class:`DetectFaces` (pyarrow): ``path`` string; ``width``, ``height``
    int32 (null when the image could not be read); ``faces`` int32, the faces kept;
    ``boxes`` list of [x1, y1, x2, y2] float32 lists; ``scores`` list of float32;
    ``landmarks`` list of [x, y] x 5 float32 lists (left eye, right eye, nose, left and right
    mouth corners); ``error`` string, null unless the image failed (then no faces)."""
    import pyarrow as pa

    floats = pa.list_(pa.field("element", pa.float32()))  # Parquet's name for list items
    return pa.schema(
        [
            ("path", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("faces", pa.int32()),
            ("boxes", pa.list_(pa.field("element", floats))),
            ("scores", floats),
            ("landmarks", pa.list_(pa.field("element", floats))),
            ("error", pa.string()),
        ],
        metadata={SCHEMA_KEY: __version__.encode()},
    )


def import_ray():
    """``ray`` and ``ray.data``, or ImportError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise ImportError(f"Ray Data is not installed ({error}): {INSTALL_HINT}") from None
    return ray


def start_local(**options):
    """``ray.init`` of a Ray instance for this machine: node address 127.0.0.1, no dashboard
    (Ray 2.60's servers still listen on every interface, behind the token authentication it
    turns on by default; no option of its narrows them). Ray puts the driver's current
    folder first on its workers' ``sys.path``; a source checkout of this package there (one
    without its compiled kernels) would shadow the installed one, so Ray is started from the
    folder this package is imported from: the workers import the package the driver runs.
    ``options`` go to ``ray.init``."""
    ray = import_ray()
    here = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        ray.init(include_dashboard=False, configure_logging=False, _node_ip_address="127.0.0.1", **options)
    finally:
        os.chdir(here)
    return ray


class DetectFaces:
    """A Ray Data stage: ``dataset.map_batches(DetectFaces, fn_constructor_kwargs={...},
    batch_size=..., concurrency=...)``.

    Args:
        weights: published weights by name (``"mobilenet0.25"``) or a checkpoint's path,
            readable where the actors run.
        threshold: faces scored below this are left out of the rows (0.6, as ``detect``).
        column: the image column: decoded images (``read_images``: arrays, RGB, any sizes)
            or encoded file contents (``read_binary_files``: bytes, decoded here with the
            Detector's header checks). Default: ``"image"`` if the batch has it, else
            ``"bytes"``.
        color: the channel order of decoded images (``"rgb"``, as ``read_images`` gives).
        path_column: the column naming each image (``include_paths=True`` gives ``path``);
            absent: rows have no path.
        threads: torch's CPU threads in each actor (Ray gives an actor one per CPU it asked
            for); None leaves them. Ray also starts the actor with ``OMP_NUM_THREADS`` set
            to its CPUs; with the calls in Ray Data's second thread (see
            :func:`actor_pool`) that cost more than ``set_num_threads`` gives back (53
            against 70 images/s with 2 threads here), so pass ``runtime_env={"env_vars":
            {"OMP_NUM_THREADS": "2"}}`` to ``map_batches`` too.
        reuse_freed_memory: an actor owns its process, so glibc is told to keep freed
            blocks for reuse (:func:`~retinaface_ext.runtime.reuse_freed_memory`: no page
            faults of fresh activations at every pass, as the ``retinaface`` command does).
        **detector_options: the :class:`~retinaface_ext.inference.Detector`'s (device,
            batch_size, settings or thresholds, target_size, max_size, scales, flip,
            merge, ...).

    A batch becomes a ``pyarrow.Table`` of :func:`schema`, one row per image, in order. An
    image that cannot be decoded or is refused (too many pixels, not an image) is a row
    with its ``error`` and no faces; the others are detected together.
    """

    def __init__(
        self,
        weights="mobilenet0.25",
        threshold: float = 0.6,
        column: Optional[str] = None,
        color: str = "rgb",
        path_column: str = "path",
        threads: Optional[int] = None,
        reuse_freed_memory: bool = True,
        **detector_options,
    ):
        import torch

        from .inference import Detector
        from .runtime import reuse_freed_memory as keep_freed_blocks

        if threads is not None:
            torch.set_num_threads(int(threads))
        if reuse_freed_memory:
            keep_freed_blocks()
        self.detector = Detector(weights, **detector_options)
        self.threshold, self.column, self.color, self.path_column = float(threshold), column, color, path_column

    def __call__(self, batch):
        import pyarrow as pa

        from .inference.ahead import read_ahead

        columns = _columns(batch)
        column = self.column or ("image" if "image" in columns else "bytes")
        if column not in columns:
            raise ValueError(f"DetectFaces: the batch has no {column!r} column (it has {', '.join(columns)})")
        values = columns[column]
        paths = columns.get(self.path_column, [None] * len(values))
        names = [str(path) if path is not None else f"row {i}" for i, path in enumerate(paths)]
        encoded = [isinstance(value, (bytes, bytearray, memoryview)) for value in values]
        if any(encoded) and not all(encoded):
            raise ValueError(f"DetectFaces: the {column!r} column mixes encoded bytes and decoded images")
        color = "bgr" if any(encoded) else self.color  # bytes are decoded as OpenCV does: BGR
        rows = {name: [None] * len(values) for name in schema().names}
        rows["path"] = [None if path is None else str(path) for path in paths]
        errors: List[Optional[str]] = [None] * len(values)
        chunk: List[Tuple[int, np.ndarray]] = []

        def detect_chunk():
            found = self._detect([image for _, image in chunk], [names[i] for i, _ in chunk], color)
            for (i, image), outcome in zip(chunk, found):
                if isinstance(outcome, str):
                    errors[i] = outcome
                    continue
                faces = outcome.above(self.threshold)
                rows["height"][i], rows["width"][i] = (int(v) for v in image.shape[:2])
                rows["faces"][i] = len(faces)
                rows["boxes"][i] = faces.boxes.cpu().tolist()
                rows["scores"][i] = faces.scores.cpu().tolist()
                rows["landmarks"][i] = faces.landmarks.reshape(-1, 10).cpu().tolist()
            chunk.clear()

        def read(i):
            return self._image(values[i], names[i])

        if self._decodes_ahead():
            decoded = read_ahead(range(len(values)), read, 1, 2 * self.detector.batch_size)
        else:
            decoded = ((i, read(i)) for i in range(len(values)))
        for i, (image, error) in decoded:
            if error is not None:
                errors[i] = error
                continue
            chunk.append((i, image))
            if len(chunk) == self.detector.batch_size:
                detect_chunk()
        if chunk:
            detect_chunk()
        for i, error in enumerate(errors):
            if error is not None:
                rows["faces"][i], rows["boxes"][i], rows["scores"][i], rows["landmarks"][i] = 0, [], [], []
                rows["error"][i] = error
        return pa.Table.from_pydict(rows, schema=schema())

    def _decodes_ahead(self) -> bool:
        """Where the network runs on a GPU, one thread decodes the next images meanwhile
        (OpenCV's decoders release the GIL). On CPUs the network's threads take the cores
        the actor has, and a decoding thread beside them slowed the calls (2 cores)."""
        import torch

        return torch.device(self.detector.device).type != "cpu"

    def _image(self, value, name: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
        """The image of one row, or None and why it cannot be read."""
        try:
            return self._read(value, name), None
        except (ValueError, TypeError, OSError) as error:
            return None, str(error)

    def _read(self, value, name: str) -> np.ndarray:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.detector.decode_image(bytes(value), name)
        image = np.asarray(value)
        if not image.flags.writeable:  # Ray's arrays are read-only views; torch wants its own
            image = image.copy()
        if image.dtype == object or image.ndim not in (2, 3):
            raise ValueError(f"{name}: expected an image array [H, W] or [H, W, C], got {image.dtype} {image.shape}")
        if image.size and image.shape[0] * image.shape[1] > 0:
            self.detector.preprocessing.check_input_size(image.shape[0], image.shape[1], name)
        return image

    def _detect(self, images, names, color) -> list:
        """The Detector's faces of each image, all in one call; where that call fails, one
        image at a time, each failure its error string."""
        if not images:
            return []
        try:
            return self.detector.detect(images, color, names)
        except (ValueError, TypeError, RuntimeError):
            pass
        found = []
        for image, name in zip(images, names):
            try:
                found.append(self.detector.detect(image, color, name))
            except (ValueError, TypeError, RuntimeError) as error:
                found.append(str(error).split("\n", 1)[0])
        return found


def _columns(batch) -> Dict[str, Sequence]:
    """A Ray batch (dict of numpy arrays, pandas DataFrame or pyarrow Table) as columns."""
    if isinstance(batch, dict):
        return batch
    if hasattr(batch, "to_pydict") and hasattr(batch, "schema"):  # pyarrow.Table
        return {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names}
    if hasattr(batch, "columns") and hasattr(batch, "to_numpy"):  # pandas.DataFrame
        return {name: batch[name].to_numpy() for name in batch.columns}
    raise TypeError(
        f"DetectFaces: a batch must be a dict of arrays, a DataFrame or a Table, got {type(batch).__name__}"
    )


# ---------------------------------------------------------------- the command's pipeline


def list_source(source: str, recursive: bool = False) -> Tuple[List[str], object]:
    """The image files in ``source`` (a folder, one file, or a URI Ray's readers take:
    ``s3://``, ``gs://``, ``file://``; its sub-folders too when ``recursive``) with an image
    extension, sorted, as the paths Ray reports for them, and the pyarrow filesystem to
    read them with."""
    import pyarrow.fs as pafs

    if "://" in source:
        filesystem, root = pafs.FileSystem.from_uri(source)
    else:
        filesystem, root = pafs.LocalFileSystem(), os.path.abspath(source)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{source}: not found")
    if info.type == pafs.FileType.File:
        return [root], filesystem
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive))
    files = sorted(
        entry.path
        for entry in entries
        if entry.type == pafs.FileType.File and entry.path.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(f"{source}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files, filesystem


def done_paths(folder: str) -> Set[str]:
    """The paths the Parquet files of ``folder`` already hold. A ``.parquet`` file that is
    not ours (no :data:`SCHEMA_KEY` in its schema) or cannot be read is refused, naming
    it: part files are written whole, so a broken one is not ours either."""
    import pyarrow.parquet as pq

    if not os.path.isdir(folder):
        return set()
    done: Set[str] = set()
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".parquet") or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        try:
            metadata = pq.read_schema(path).metadata or {}
            if SCHEMA_KEY not in metadata:
                raise ValueError("not a results file of retinaface_ext")
            done.update(pq.read_table(path, columns=["path"]).column("path").to_pylist())
        except Exception as error:  # pyarrow raises its own kinds for broken files
            raise ValueError(f"{path}: {error}; --parquet takes a folder of our results (or a new one)") from None
    return done


def write_part(folder: str, table, run: str, number: int) -> str:
    """One part file written whole: to a hidden temporary file, then renamed."""
    import pyarrow.parquet as pq

    final = os.path.join(folder, f"part-{run}-{number:05d}.parquet")
    temporary = os.path.join(folder, f".part-{run}-{number:05d}.parquet.tmp")
    try:
        pq.write_table(table.cast(schema()), temporary)
        os.replace(temporary, final)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return final


def images_per_call(batch_size: int) -> int:
    """Images per call of the stage in :func:`detect_to_parquet`: several Detector batches,
    so that Ray's cost per call (its task, the blocks in and out) is spread and decoding
    runs ahead of the network (at batches of 8 on 2 cores, calls of 64 images took 0.85
    of the time of calls of 8)."""
    return max(IMAGES_PER_CALL, 4 * int(batch_size))


def actor_pool(ray, actors: int):
    """``ActorPoolStrategy(size=actors)`` with the stage's calls run in the thread that
    takes the actor's tasks where this Ray can: by default Ray Data hands each call to a
    thread of its own, whose glibc arena gives freed blocks back to the kernel however
    :func:`~retinaface_ext.runtime.reuse_freed_memory` asks, so each pass faults its
    activations in afresh (measured: 3 times the page faults, 1.15 times the time)."""
    import inspect

    options = {"size": actors}
    if "enable_true_multi_threading" in inspect.signature(ray.data.ActorPoolStrategy).parameters:
        options["enable_true_multi_threading"] = True  # one call at a time still: max_concurrency 1
    return ray.data.ActorPoolStrategy(**options)


def detect_to_parquet(
    source: str,
    out: str,
    stage_options: dict,
    recursive: bool = False,
    actors: int = 1,
    actor_resources: Optional[dict] = None,
) -> Tuple[int, int]:
    """Every image in ``source`` (:func:`list_source`) not yet in ``out`` through :class:`DetectFaces`
    (``stage_options``) on the Ray instance this process is connected to, the rows
    written to ``out`` as part files of up to :data:`ROWS_PER_PART` rows, each whole.
    Each call of the stage takes :func:`images_per_call` images, the files of one read
    task. Returns (images done now, images skipped as already in ``out``)."""
    ray = import_ray()
    files, filesystem = list_source(source, recursive)
    done = done_paths(out)
    todo = [path for path in files if path not in done]
    if not todo:
        return 0, len(files)
    os.makedirs(out, exist_ok=True)
    per_call = images_per_call(stage_options.get("batch_size", 8))
    # Read tasks of one call's files each, so that each call takes one whole block: Ray's
    # own choice (640 files: 89 tasks of about 7) cost a task each and left calls of 64, 6, 64...
    blocks = -(-len(todo) // per_call)
    dataset = ray.data.read_binary_files(todo, include_paths=True, filesystem=filesystem, override_num_blocks=blocks)
    dataset = dataset.map_batches(
        DetectFaces,
        fn_constructor_kwargs=dict(column="bytes", **stage_options),
        batch_size=None,  # a call per block
        batch_format="pyarrow",
        compute=actor_pool(ray, actors),
        **(actor_resources or {}),
    )
    import pyarrow as pa

    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    pending, parts, written = [], 0, 0
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        pending.append(batch)
        if sum(len(table) for table in pending) >= ROWS_PER_PART:
            write_part(out, pa.concat_tables(pending), run, parts)
            written, parts, pending = written + sum(len(table) for table in pending), parts + 1, []
    if pending:
        write_part(out, pa.concat_tables(pending), run, parts)
        written += sum(len(table) for table in pending)
    return written, len(files) - len(todo)
