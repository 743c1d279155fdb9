"""Shared fixtures for vmpod's end-to-end tests: the built binary, and the
nested-harness runner (skipped, with the reason, where it cannot run)."""

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


def run_nested(vmpod_binary, *scenarios):
    try:
        return harness.run(vmpod_binary, *scenarios)
    except harness.Unavailable as why:
        pytest.skip(f"skipped: {why}")
