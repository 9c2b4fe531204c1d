"""One owner of the user-facing errors and their exit codes (``tfbnas.errors``), one entry-point wrapper."""

import ast
import inspect
import sys

import pytest

from conftest import BackgroundRun
from tfbnas import errors

ERROR_TYPES = [value for value in vars(errors).values() if inspect.isclass(value) and issubclass(value, Exception)]


def test_the_errors_module_is_a_leaf():
    tree = ast.parse(open(errors.__file__).read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name and name.startswith("tfbnas")], imported


def test_every_error_has_a_documented_exit_code():
    documented = {int(line.split()[0]) for line in errors.__doc__.splitlines() if line[:1].isdigit()}
    assert documented == {errors.EXIT_OK, errors.EXIT_ERROR, errors.EXIT_USAGE, errors.EXIT_INTERRUPTED}
    assert len(ERROR_TYPES) >= 15
    for error in ERROR_TYPES:
        assert issubclass(error, errors.TfbnasError) and error.exit_code in (errors.EXIT_ERROR, errors.EXIT_USAGE)
    assert errors.ConfigError.exit_code == errors.EXIT_USAGE and errors.DeployError.exit_code == errors.EXIT_ERROR


def test_the_old_import_paths_name_the_same_classes():
    from tfbnas import cost, data, deploy, runs, width
    from tfbnas.deploy import parity
    from tfbnas.flags import ConfigError
    from tfbnas.space.genotype import GenotypeError
    from tfbnas.space.ops import SpaceError

    assert (ConfigError, data.DatasetNotFoundError, runs.RunDirError, cost.CostModelError, deploy.DeployError,
            parity.ParityError, width.WidthSearchError, GenotypeError, SpaceError) == (
        errors.ConfigError, errors.DatasetNotFoundError, errors.RunDirError, errors.CostModelError,
        errors.DeployError, errors.ParityError, errors.WidthSearchError, errors.GenotypeError, errors.SpaceError)


PROGRAM = """
import sys
from tfbnas import errors, flags

def main(argv):
    raise getattr(errors, argv[1])("what went wrong; how to fix it")

flags.run(main, prog="prog")
"""


CASES = [("ConfigError", 2), ("ParityError", 1), ("DatasetNotFoundError", 1)]
BUG = PROGRAM.replace('getattr(errors, argv[1])("what went wrong; how to fix it")', "KeyError('bug')")
# Each program pays TensorFlow's import: they run beside the in-process tests (conftest.BackgroundRun).
for _error, _code in CASES:
    BackgroundRun(__name__, "program", f"wrapper-{_error}", lambda _, e=_error: [sys.executable, "-c", PROGRAM, e],
                  param=f"{_error}-{_code}")
BackgroundRun(__name__, "bug_program", "wrapper-bug", lambda _: [sys.executable, "-c", BUG, "x"])


@pytest.fixture
def program(request):
    return BackgroundRun.for_test(request)[0]


@pytest.fixture
def bug_program(request):
    return BackgroundRun.for_test(request)[0]


@pytest.mark.parametrize("error, code", CASES)
def test_the_wrapper_prints_one_line_and_exits_with_the_errors_code(error, code, program):
    result = program
    assert result.returncode == code, result.stderr[-2000:]
    ours = [line for line in result.stderr.splitlines() if "prog" in line or "Traceback" in line]
    assert ours == ["prog: error: what went wrong; how to fix it"] == result.stderr.strip().splitlines()[-1:]


def test_an_unexpected_exception_still_shows_its_traceback(bug_program):
    result = bug_program
    assert result.returncode == 1 and "Traceback" in result.stderr and "KeyError: 'bug'" in result.stderr
