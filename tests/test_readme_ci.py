"""The README's quick start and .ci/run must not drift apart."""

import re

from conftest import REPO


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.+)"$', ci, re.M).group(1)
    readme = (REPO / "README.md").read_text()
    assert f"\n{command}\n" in readme
    assert 'bash -c "$TEST_COMMAND"' in ci


def test_ci_treats_no_tests_collected_as_failure():
    ci = (REPO / ".ci" / "run").read_text()
    assert '"$rc" -eq 5' in ci
