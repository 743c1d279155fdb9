"""Shared fixtures for vmpod's end-to-end tests: where the built binary and
the tiny guests are, and the nested-harness run shared by the Linux-guest
tests."""

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


@pytest.fixture(scope="session")
def vmpod_binary():
    """The release vmpod that scripts/test built."""
    binary = TARGET / "release" / "vmpod"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `cargo build --release` first (scripts/test does)")
    return binary


def run_nested(vmpod_binary, *scenarios, timeout=900):
    """Boots L1 under QEMU TCG and runs the scenarios (see tests/nested/).
    Returns {scenario name: {"result": [...], "stdout": str, "stderr": str}}."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("skipped: qemu-system-x86 is not installed, so the nested Linux-guest harness cannot run")
    prepared = TARGET / "nested"
    subprocess.run([REPO / "tests/nested/prepare.sh", prepared], check=True, capture_output=True)
    completed = subprocess.run(
        [REPO / "tests/nested/run.sh", prepared, vmpod_binary, *scenarios],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    (TARGET / "nested" / "last-run.log").write_text(completed.stdout + completed.stderr)
    runs = {}
    for line in completed.stdout.splitlines():
        if not line.startswith("L1: "):
            continue
        words = line[4:].split(" ", 2)
        if words[0] == "RESULT" and len(words) == 3:
            runs.setdefault(words[1], {"result": [], "stdout": "", "stderr": ""})["result"].append(words[2])
        elif len(words) == 3 and words[1] in ("stdout", "stderr") and words[2].startswith("| "):
            runs.setdefault(words[0], {"result": [], "stdout": "", "stderr": ""})[words[1]] += words[2][2:] + "\n"
    return runs
