"""Run folders: one per run, holding everything a user needs afterwards."""

import csv
import datetime
import json
import numbers
import os
import time

from typing import Dict, List, Optional, Sequence

from tfbnas.errors import RunDirError  # noqa: F401  (importable from here)


def _jsonable(value):
    """JSON for what a record may hold besides plain Python: numpy scalars and arrays, anything else as text."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_json(path: str, value, sort_keys: bool = False):
    """Writes ``value`` as indented JSON atomically (a temporary file renamed over ``path``), so an
    interrupted run never leaves a half-written record behind for ``--resume`` to trip over.

    Numpy scalars become numbers and arrays lists; any other object is written as its text.

    Example:
        >>> write_json("runs/r1/summary.json", {"top1": np.float32(0.85)})   # {"top1": 0.85}
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=2, sort_keys=sort_keys, default=_jsonable)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_rows(path: str) -> List[Dict[str, str]]:
    """The rows of a CSV record as dicts of strings (empty when the file does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: str, rows: Sequence[dict], fields: Optional[Sequence[str]] = None):
    """Writes a CSV record atomically: one column per field (``fields``, or every key in the order first
    seen), an empty cell where a row lacks a field; keys outside ``fields`` are left out."""
    if fields is None:
        fields = list(dict.fromkeys(k for row in rows for k in row))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields), restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_rows(path: str, rows: Sequence[dict], fields: Optional[Sequence[str]] = None):
    """Adds rows to a CSV record. Without ``fields`` the columns grow: a key seen for the first time (e.g.
    the architecture terms after a weight-only warm-up epoch) becomes a new last column and earlier rows
    get an empty cell in it.

    Example:
        >>> append_rows("h.csv", [{"epoch": 1, "loss": 1.0}])
        >>> append_rows("h.csv", [{"epoch": 2, "loss": 0.5, "arch_ce": 0.7}])   # epoch,loss,arch_ce
    """
    old = read_rows(path)
    if fields is None:
        header = list(old[0]) if old else []
        fields = header + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in header]
    write_rows(path, old + list(rows), fields)


def make_run_dir(output_dir, kind: str, dataset: str = "") -> str:
    """Creates (or reuses) the run folder and checks it is writable.

    Args:
        output_dir: requested folder, or None for ``runs/<kind>-<dataset>-<timestamp>``.
        kind: entry point name (``search``, ``train``, ``run``).
        dataset: dataset name for the default folder name.

    Returns:
        The absolute path of the folder.

    Raises:
        RunDirError: the folder cannot be created or is not writable.
    """
    if not output_dir:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        output_dir = os.path.join("runs", "-".join(p for p in (kind, dataset, stamp) if p))
    output_dir = os.path.abspath(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise RunDirError(
            f"cannot write the run folder {output_dir} ({e.strerror or e}); pass a writable --output_dir"
        ) from None
    return output_dir


class StageTimer:
    """Prints a banner per pipeline stage and records its wall time."""

    def __init__(self, log=print):
        self.times = {}
        self._log = log

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                timer._log(f"\n=== {name} " + "=" * max(0, 70 - len(name)))
                self.start = time.time()
                return self

            def __exit__(self, *exc):
                timer.times[name] = time.time() - self.start
                if exc[0] is None:
                    timer._log(f"--- {name}: {timer.times[name]:.1f} s")
                return False

        return _Stage()
