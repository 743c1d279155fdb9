"""Runs the nested Linux-guest harness (prepare.sh, run.sh) and reads its
results; used by the pytest suite and by the benchmarks."""

import os
import pathlib
import shutil
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


class Unavailable(Exception):
    """The harness cannot run on this machine; the message says why."""


def run(vmpod_binary, *scenarios, timeout=900):
    """Boots L1 under QEMU TCG and runs the scenarios (NAME VMM VCPUS COMMAND...).
    Returns {name: {"result": [...], "stdout", "stderr", "serial", "qmp": str}}:
    vmpod's output, what /vm/serial showed a newcomer, and QMP replies."""
    if shutil.which("qemu-system-x86_64") is None:
        raise Unavailable("qemu-system-x86 is not installed, so the nested Linux-guest harness cannot run")
    prepared = TARGET / "nested"
    subprocess.run([REPO / "tests/nested/prepare.sh", prepared], check=True, capture_output=True)
    completed = subprocess.run(
        [REPO / "tests/nested/run.sh", prepared, vmpod_binary, *scenarios],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )
    (prepared / "last-run.log").write_text(completed.stdout + completed.stderr)
    runs = {}
    for line in completed.stdout.splitlines():
        if not line.startswith("L1: "):
            continue
        words = line[4:].split(" ", 2)
        if len(words) < 3:
            continue
        name = words[1] if words[0] == "RESULT" else words[0]
        entry = runs.setdefault(name, {"result": [], "stdout": "", "stderr": "", "serial": "", "qmp": ""})
        if words[0] == "RESULT":
            entry["result"].append(words[2])
        elif words[1] in ("stdout", "stderr", "serial") and words[2].startswith("| "):
            entry[words[1]] += words[2][2:] + "\n"
        elif words[1] == "qmp":
            entry["qmp"] += words[2] + "\n"
    return runs


def value(run, key):
    """KEY=VALUE from a scenario's RESULT lines, or None."""
    for entry in run["result"]:
        for word in entry.split():
            if word.startswith(key + "="):
                return word.split("=", 1)[1]
    return None
