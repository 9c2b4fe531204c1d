"""Run folders: one per run, holding everything a user needs afterwards."""

import datetime
import os
import time

from tfbnas.errors import RunDirError  # noqa: F401  (importable from here)


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
