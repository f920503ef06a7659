"""Repository-level pytest hooks (loaded even when no test file is collected)."""

import pytest


def pytest_sessionfinish(session, exitstatus):
    # A run that collects no tests must fail, never pass quietly (pytest's exit code 5).
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
