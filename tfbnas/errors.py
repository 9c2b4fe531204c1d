"""Errors a user can cause and fix, and the exit code each gives at every tfbnas entry point.

Every message is one line that names the problem and the fix. Entry points run through
:func:`tfbnas.flags.run`, which prints ``<program>: error: <message>`` and exits with the error's
``exit_code`` — nothing else is needed to add an error type:

    from tfbnas.errors import ConfigError

    if batch_size % samples:
        raise ConfigError(f"--batch_size={batch_size} must divide by --dcp_ggn_samples={samples}")

Exit codes (the same for ``python -m tfbnas.run``, ``tfbnas.search``, ``tfbnas.train``, ``tfbnas.width``,
``deploy/convert.py`` and ``deploy/benchmark.py``):

====  =====================================================================================
0     done
1     the command line is fine but what it points to is not: a missing dataset, an unwritable
      or foreign run folder, a malformed genotype, a model file that does not load, a corrupt
      checkpoint, a diverged search, a lost worker of a multi-worker run, a layer LCE cannot
      binarise, a parity failure
2     the command line is wrong: an unknown flag, a bad value, a missing flagfile, flags that
      do not go together (:class:`ConfigError`)
130   interrupted (Ctrl-C); the run folder stays resumable with ``--resume``
====  =====================================================================================

This module imports nothing from tfbnas, so any module can raise these errors.
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class TfbnasError(Exception):
    """A problem the user can fix; the one-line message names it and the fix."""

    exit_code = EXIT_ERROR


class ConfigError(TfbnasError, ValueError):
    """A flag combination that absl accepts but tfbnas cannot run; the message says what to change."""

    exit_code = EXIT_USAGE


class RunDirError(TfbnasError, OSError):
    """The run folder cannot be created, written or resumed; the message names the folder and the fix."""


class DatasetNotFoundError(TfbnasError, FileNotFoundError):
    """The requested dataset is not on this machine; the message says where we looked and how to get it."""


class IdxFormatError(TfbnasError, ValueError):
    """An IDX file is truncated or not an IDX file."""


class SpaceError(TfbnasError, ValueError):
    """A search-space setting is invalid; the message names the setting and the fix."""


class GenotypeError(TfbnasError, ValueError):
    """A genotype (or its JSON file) is invalid; the message names the field and the fix."""


class SearchDiverged(TfbnasError, RuntimeError):
    """The search loss became NaN/Inf; the message names the step and the checkpoint to resume from."""


class WorkerLostError(TfbnasError, RuntimeError):
    """Another worker of a multi-worker run stopped or cannot be reached; the message says how to resume."""


class CostModelError(TfbnasError, ValueError):
    """A model, layer or argument the cost model cannot count."""


class ScheduleError(TfbnasError, ValueError):
    """A schedule argument is invalid; the message names it and the fix."""


class DistillerError(TfbnasError, ValueError):
    """Invalid distillation arguments; the message names the argument and the fix."""


class WidthSearchError(TfbnasError, ValueError):
    """A width-search input tfbnas cannot use; the message names the problem and the fix."""


class PruneError(WidthSearchError):
    """A model that DNAL cannot gate or prune as asked; the message names the layer and the fix."""


class ModelFileError(TfbnasError):
    """A model file (``.keras``) that is missing, does not load or does not fit the run; the message says which."""


class DeployError(TfbnasError):
    """A deploy step cannot go on; the one-line message names the problem and the fix."""


class ParityError(DeployError):
    """The converted model disagrees with the Keras model on more images than allowed."""
