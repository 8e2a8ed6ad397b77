"""The record that ``retinaface widerface-predict`` keeps in its prediction folder, so that
runs with different settings never mix unnoticed.

``<folder>/retinaface-predict.json`` holds the run's settings (checkpoint digest, sizes,
thresholds, image folder), its status (``running``, ``interrupted``, ``complete``) and the
SHA-256 of every prediction file it wrote. A new run into the folder must have the same
settings (or replace the old files explicitly), and the evaluation reports prediction
files that the recorded run did not write.
"""

import hashlib
import json
import os
from typing import Dict, List, Optional

from ..files import atomic_write_text

RECORD_NAME = "retinaface-predict.json"
RECORD_FORMAT = 1


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prediction_files(folder: str) -> List[str]:
    """``<event>/<name>.txt`` paths (relative, '/'-separated) of a prediction folder."""
    found = []
    for event in sorted(os.listdir(folder)):
        event_dir = os.path.join(folder, event)
        if os.path.isdir(event_dir):
            found += [
                f"{event}/{name}"
                for name in sorted(os.listdir(event_dir))
                if name.endswith(".txt") and not name.startswith(".")
            ]
    return found


def read_record(folder: str) -> Optional[dict]:
    path = os.path.join(folder, RECORD_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("settings"), dict)
            or not isinstance(record.get("files"), dict)
        ):
            raise ValueError("not a prediction run record")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: unreadable run record ({error}); remove it or use another folder") from None
    return record


class PredictionRun:
    """The record of one run of widerface-predict into ``folder``: :meth:`start` checks the
    folder and writes the record, :meth:`add` notes each file written, :meth:`save` writes
    the record again (atomically)."""

    def __init__(self, folder: str, settings: Dict[str, object]):
        self.folder, self.settings = folder, settings
        self.files: Dict[str, str] = {}
        self.status = "running"

    def start(self, overwrite: bool = False) -> None:
        """Refuses a folder holding predictions of other settings (or of no recorded run)
        unless ``overwrite``, which first deletes those prediction files and the record.
        Predictions of the same settings are kept and rewritten."""
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise ValueError(f"--out {self.folder}: exists and is not a folder")
        existing = prediction_files(self.folder) if os.path.isdir(self.folder) else []
        record = read_record(self.folder) if os.path.isdir(self.folder) else None
        if record is not None and record["settings"] == self.settings:
            self.files = {k: v for k, v in record["files"].items() if k in existing}
        elif existing or record is not None:
            if not overwrite:
                raise ValueError(
                    f"{self.folder} holds predictions of {self._describe(record)}; pass --overwrite to "
                    f"replace them, or choose another folder (runs must not mix)"
                )
            for name in existing:
                os.remove(os.path.join(self.folder, *name.split("/")))
            if record is not None:
                os.remove(os.path.join(self.folder, RECORD_NAME))
        self.save()

    def _describe(self, record) -> str:
        if record is None:
            return "an unrecorded run"
        changed = sorted(
            k for k in set(record["settings"]) | set(self.settings) if record["settings"].get(k) != self.settings.get(k)
        )
        return (
            "another run ("
            + ", ".join(f"{k}: {record['settings'].get(k)!r} there, {self.settings.get(k)!r} now" for k in changed)
            + ")"
        )

    def add(self, relative_path: str) -> None:
        self.files[relative_path] = file_digest(os.path.join(self.folder, *relative_path.split("/")))

    def save(self, status: Optional[str] = None) -> None:
        self.status = status or self.status
        record = {"format": RECORD_FORMAT, "status": self.status, "settings": self.settings, "files": self.files}
        atomic_write_text(os.path.join(self.folder, RECORD_NAME), json.dumps(record, indent=1, sort_keys=True) + "\n")


def check_prediction_folder(folder: str) -> List[str]:
    """What the evaluation should say about a prediction folder: warnings when its files do
    not all come from the one run recorded there, or that run did not finish. No record
    (a folder from another tool): nothing to say."""
    record = read_record(folder)
    if record is None:
        return []
    warnings = []
    recorded = record["files"]
    foreign = [
        name
        for name in prediction_files(folder)
        if recorded.get(name) != file_digest(os.path.join(folder, *name.split("/")))
    ]
    if foreign:
        warnings.append(
            f"{len(foreign)} prediction files (e.g. {foreign[0]}) were not written by the run recorded "
            f"in {os.path.join(folder, RECORD_NAME)}: they come from another run or were edited"
        )
    if record.get("status") != "complete":
        warnings.append(
            f"the run recorded in {os.path.join(folder, RECORD_NAME)} did not finish "
            f"(status {record.get('status')!r}): images it did not reach count as without faces"
        )
    return warnings
