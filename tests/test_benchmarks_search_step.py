"""``benchmarks/search_step.py`` stops a configuration whose process needs more memory than allowed, reports it
and goes on; the run then exits with code 3 (no machine here is small enough to need it for real)."""

import subprocess
import sys

from conftest import REPO


def test_a_configuration_above_the_memory_limit_is_stopped_and_reported():
    result = subprocess.run([sys.executable, "benchmarks/search_step.py", "--configs=smoke", "--presets=dcp,bats",
                             "--steps=1", "--max_rss_gb=0.3"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 3, result.stderr[-2000:]
    for case in ("dcp/smoke", "bats/smoke"):  # the first one stopped, the run went on to the next
        assert f"stopped {case}: its RSS passed 0.3 GB (--max_rss_gb)" in result.stdout, result.stdout[-2000:]
    assert "dcp/smoke stopped, bats/smoke stopped" in result.stdout
    assert "SUMMARY" not in result.stdout
