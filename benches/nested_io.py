#!/usr/bin/env python3
"""Disk and network speed of the Debian kernel on vmpod beside QEMU microvm,
same kernel, same L1, same backing files, one run: the nested harness
(tests/nested/) boots L2 under each VMM, alternating, with a 64 MiB raw
data disk (virtio-blk; QEMU's default writeback cache, vmpod's page-cached
file) and a NIC on passt (virtio-net), and L2 measures

  randread-4096 / randwrite-4096   4 KiB random I/O, O_DIRECT, ops/s
  read-1048576 / write-1048576     1 MiB sequential I/O, O_DIRECT, MB/s
  tcp-send                         8 MiB to a TCP server on the pod side
                                   (L1) through passt, MB/s

L1 is emulated (QEMU TCG), so passt runs slowly and absolute figures are
low; the ratio between the VMMs is what the run shows. Figures only;
nothing is asserted. Takes several minutes.
usage: benches/nested_io.py [--rounds N]   (after cargo build --release)
"""

import pathlib
import re
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "nested"))
import harness  # noqa: E402

TESTS = ("randread-4096", "randwrite-4096", "read-1048576", "write-1048576", "tcp-send")


def figures(run):
    """{test: (ops/s or None, MB/s)} from one scenario's L2 output."""
    found = {}
    for match in re.finditer(r"L2: bench (\S+) (?:ops/s=(\d+) )?MB/s=([\d.]+)", run["stdout"]):
        ops = int(match.group(2)) if match.group(2) else None
        found[match.group(1)] = (ops, float(match.group(3)))
    return found


def main():
    rounds, runs = harness.bench_runs(__doc__, lambda number: [f"vmpod-{number} vmpod 2 bench poweroff", f"qemu-{number} qemuio 2 bench poweroff"], timeout=3600)
    results = {"vmpod": {}, "qemu": {}}
    for name, run in runs.items():
        vmm = name.split("-")[0]
        if vmm not in results:
            continue
        found = figures(run)
        if not found:
            print(f"{name}: no figures; its output:\n{run['stdout']}\n{run['stderr']}", file=sys.stderr)
        for test, value in found.items():
            results[vmm].setdefault(test, []).append(value)
    print(f"{'test':<16} {'vmpod':>22} {'QEMU microvm':>22}   (median of {rounds} rounds)")
    for test in TESTS:
        cells = []
        for vmm in ("vmpod", "qemu"):
            values = results[vmm].get(test, [])
            if not values:
                cells.append(f"{'-':>22}")
                continue
            megabytes = statistics.median(v[1] for v in values)
            ops = [v[0] for v in values if v[0] is not None]
            text = f"{statistics.median(ops):.0f} ops/s " if test.startswith("rand") and ops else ""
            cells.append(f"{text + f'{megabytes:.1f} MB/s':>22}")
        print(f"{test:<16} {cells[0]} {cells[1]}")


if __name__ == "__main__":
    main()
