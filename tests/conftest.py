"""Shared fixtures for vmpod's end-to-end tests: the built binary, and the
nested-harness runner (skipped, with the reason, where it cannot run)."""

import os
import sys

import pytest

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent / "nested"))
import harness  # noqa: E402


@pytest.fixture(scope="session")
def vmpod_binary():
    """The release vmpod that scripts/test built."""
    binary = harness.TARGET / "release" / "vmpod"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build --release` first (scripts/test does)")
    return binary


def not_here(reason):
    """Skips a test that cannot run on this machine, saying why; under CI
    (CI=true), where scripts/test installs everything, that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI must run this test")
    pytest.skip(f"skipped: {reason}")


def run_nested(vmpod_binary, *scenarios):
    try:
        return harness.run(vmpod_binary, *scenarios)
    except harness.Unavailable as why:
        not_here(str(why))


def result(run, key):
    """KEY=VALUE from a nested scenario's RESULT lines; fails the test,
    showing what the scenario printed, when it is missing."""
    found = harness.value(run, key)
    if found is None:
        pytest.fail(f"no {key} in {run['result']}\n{run['stdout'][-4000:]}\n{run['stderr']}")
    return found
