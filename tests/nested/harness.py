"""Runs the nested Linux-guest harness (prepare.sh, run.sh) and reads its
results; used by the pytest suite and by the benchmarks."""

import argparse
import os
import pathlib
import shutil
import sys
import subprocess
import threading
import time
import warnings

REPO = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


class Unavailable(Exception):
    """The harness cannot run on this machine; the message says why."""


class Hung(Exception):
    """L1 did not finish in time; the message says what it printed."""


# L1 under TCG reaches its /init and says so within seconds; silence this
# long is the harness's known hang (TESTING.md), not a vmpod result.
FIRST_OUTPUT_SECONDS = 180

# What L1's kernel prints when it, not vmpod, is in trouble. L1's own
# kernel (its KVM under TCG) fails now and then whatever vmpod it runs:
# a stack guard page hit in a vCPU thread, a soft lockup (seen with the
# vmpod from before the boot-time work as with later ones, in up to one L1
# in three), or it stalls. Scenarios that did not finish cleanly are run
# again in a new L1, up to ATTEMPTS runs in all.
ATTEMPTS = 3
# A soft-locked L1 goes on printing its watchdog's complaints; this long
# after the first sign of trouble, L1 is stopped (its kernel's report is
# in the output by then).
TROUBLE_SECONDS = 60
# (An L1 whose timers stopped firing goes on printing RCU stall and hung
# task reports, and its L2s wait in HLT for timer interrupts.)
L1_KERNEL_TROUBLE = ("Kernel panic", "BUG: soft lockup", "corrupted stack end", "stack guard page was hit",
                     "detected stalls on CPUs/tasks", "blocked for more than")
# What vmpod logs when its guest triple-faults.
L2_TRIPLE_FAULT = "the guest reset (triple fault)"
# What l1-init prints when a scenario's watchdog kills a VM that did not end.
VM_STUCK = "stuck: its VM was killed"
# L1 prints a scenario's output when its VM has ended; meanwhile a RESULT
# line at each step, and l1-init's own waits give up after 180 s (the cloud
# scenario says it is alive every 95 s). This long without a line is a stall.
STALL_SECONDS = 300


def run_l1(command, timeout, when=None, env=None, live=None):
    """Runs L1; returns (output, finished). Stops it early when it prints
    no "L1: " line within FIRST_OUTPUT_SECONDS, or nothing for
    STALL_SECONDS, TROUBLE_SECONDS after its kernel shows trouble, and at
    `timeout`. `when` maps text to a function run
    (on a thread of its own) once a line with that text appears. With
    `live`, a path: L1's output is written there as it comes."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                               env=env)
    lines = []
    pending = dict(when or {})

    def collect():
        with open(live or os.devnull, "w") as copy:
            for line in process.stdout:
                lines.append(line)
                copy.write(line)
                copy.flush()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    started = time.monotonic()
    seen, last_line, troubled = 0, started, None
    while process.poll() is None:
        now = time.monotonic()
        elapsed = now - started
        if len(lines) != seen:
            # The reader goes on appending: look at this many, no more.
            new = lines[seen:]
            for text, action in list(pending.items()):
                if any(text in line for line in new):
                    del pending[text]
                    threading.Thread(target=action, daemon=True).start()
            # Only L1's own lines: an L2's console (printed after its VM
            # ended, each line starting "L1: ") does not make L1 unhealthy.
            if troubled is None and any(sign in line for line in new if not line.startswith("L1: ")
                                        for sign in L1_KERNEL_TROUBLE):
                troubled = now
            seen, last_line = seen + len(new), now
        silent = not any("L1: " in line for line in list(lines))
        stalled = now - last_line > STALL_SECONDS
        gone = troubled is not None and now - troubled > TROUBLE_SECONDS
        if elapsed > timeout or stalled or gone or (silent and elapsed > FIRST_OUTPUT_SECONDS):
            process.kill()
            process.wait()
            reader.join(timeout=10)
            return "".join(lines), False
        time.sleep(0.5)
    reader.join()
    return "".join(lines), True


def prepare_cloud(prepared):
    """Builds (once, then cached) the Debian cloud image the cloud
    scenarios boot; it needs root and debootstrap."""
    if os.geteuid() != 0:
        raise Unavailable("building the Debian cloud image needs root (losetup, mount, chroot)")
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed, so the Debian cloud image cannot be built")
    built = subprocess.run([REPO / "tests/nested/prepare-cloud.sh", prepared], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building the Debian cloud image failed:\n{built.stdout}\n{built.stderr}")


def scenario_parts(output):
    """{name: the part of L1's output from that scenario's "starting-at"
    line to the next scenario's}; what L1's kernel printed meanwhile is in
    it too."""
    parts, name = {}, None
    for line in output.splitlines(keepends=True):
        if line.startswith("L1: RESULT ") and " starting-at=" in line:
            name = line.split()[2]
            parts[name] = ""
        if name is not None:
            parts[name] += line
    return parts


def ended(name, part):
    """Whether a scenario got as far as its closing RESULT line (exit=)."""
    return any(line.startswith(f"L1: RESULT {name} ") and " exit=" in line for line in part.splitlines())


def environment_trouble(part):
    """Why this part of L1's output is not a vmpod result, or None."""
    # L1's own kernel in trouble (its KVM under TCG).
    signs = [sign for sign in L1_KERNEL_TROUBLE if sign in part]
    if signs:
        return f"showed {', '.join(signs)}"
    # No scenario makes an L2 guest triple-fault; L1's KVM under TCG has
    # been seen to end an L2 that way (and to crash L1 itself) in runs
    # where the same vmpod passed before and after.
    if L2_TRIPLE_FAULT in part:
        return "saw an L2 guest triple-fault"
    # A guest that stopped (L2's vCPUs no longer run, or it waits for
    # something forever) has been seen in a run that went on to fail in
    # other ways; run again, its console and vmpod's threads are logged.
    if VM_STUCK in part:
        return "saw a stuck VM killed"
    return None


def run(vmpod_binary, *scenarios, timeout=900, vnc_port=None, when=None):
    """Boots L1 under QEMU TCG and runs the scenarios (NAME VMM VCPUS COMMAND...).
    Returns {name: {"result": [...], "stdout", "stderr", "serial", "qmp": str}}:
    vmpod's output, what /vm/serial showed a newcomer, and QMP replies.
    With `vnc_port`, that host port reaches L1's port 5900 (a scenario's
    `display` command); `when` as for run_l1.

    L1 under TCG fails now and then whatever it runs (see ATTEMPTS): when
    it stalls, ends early or shows trouble, L1 is booted again, up to
    ATTEMPTS times in all, for the scenarios that had not finished cleanly
    (those that had are kept). After the last one, a scenario that got to
    its end only with trouble is taken as the first L1 that ended it left
    it; the tests say what went wrong in it. One that never got to its end
    is a Hung error carrying L1's last lines."""

    if shutil.which("qemu-system-x86_64") is None:
        raise Unavailable("qemu-system-x86 is not installed, so the nested Linux-guest harness cannot run")
    prepared = TARGET / "nested"
    subprocess.run([REPO / "tests/nested/prepare.sh", prepared], check=True, capture_output=True)
    if any(scenario.split()[1] in ("cloud", "qemucloud") for scenario in scenarios):
        prepare_cloud(prepared)
    # One log per set of scenarios, so a later run does not overwrite it.
    log = prepared / f"run-{scenarios[0].split()[0]}.log"
    env = dict(os.environ, VMPOD_VNC_PORT=str(vnc_port)) if vnc_port else None
    # kept: scenarios that finished cleanly; fallback: the first run of each
    # that finished, but with trouble (better than none if later L1s fail).
    remaining, kept, fallback, outputs = list(scenarios), {}, {}, []
    for attempt in range(1, ATTEMPTS + 1):
        command = [REPO / "tests/nested/run.sh", prepared, vmpod_binary, *remaining]
        output, finished = run_l1(command, timeout, when, env, live=log.with_suffix(".live.log"))
        outputs.append(f"=== attempt {attempt}: {', '.join(s.split()[0] for s in remaining)}\n{output}")
        log.write_text("".join(outputs))
        parts = scenario_parts(output)
        why = None
        for scenario in remaining:
            name = scenario.split()[0]
            part = parts.get(name)
            if part is None or not ended(name, part):
                why = ("printed nothing of its own" if not parts and finished
                       else "stalled or did not finish" if not finished
                       else "ended early")
                why = f"{why} (during {name})" if part is not None else why
                break
            trouble = environment_trouble(part)
            if trouble and attempt < ATTEMPTS:
                why = f"{trouble} (during {name})"
                fallback.setdefault(name, part)
                break
            # In the last L1, a run with trouble is no better than the one
            # kept from an earlier L1, which got to its end first.
            kept[name] = fallback.get(name, part) if trouble else part
        remaining = [scenario for scenario in remaining if scenario.split()[0] not in kept]
        if remaining and attempt == ATTEMPTS:
            # A scenario that finished in an earlier L1, though with trouble,
            # is better than none: its tests say what went wrong in it.
            kept.update({name: part for name, part in fallback.items() if name not in kept})
            remaining = [scenario for scenario in remaining if scenario.split()[0] not in kept]
            if remaining:
                tail = "".join(output.splitlines(keepends=True)[-40:])
                names = ", ".join(scenario.split()[0] for scenario in remaining)
                raise Hung(f"{names} never finished in {ATTEMPTS} runs of L1 (the last {why}); "
                           f"all of them are in {log}; the last ended:\n{tail}")
        if not remaining:
            break
        # A qemucloud scenario boots the seed disk its cloud scenario made.
        at = scenarios.index(remaining[0])
        if remaining[0].split()[1] == "qemucloud" and at > 0 and scenarios[at - 1].split()[1] == "cloud":
            kept.pop(scenarios[at - 1].split()[0], None)
            remaining.insert(0, scenarios[at - 1])
        warnings.warn(f"nested harness: L1 {why}; booting it again for {', '.join(s.split()[0] for s in remaining)} "
                      f"(attempt {attempt} is in {log}); it ended:\n{output[-3000:]}")
    runs = {}
    for scenario in scenarios:
        for line in kept[scenario.split()[0]].splitlines():
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


def bench_runs(description, scenarios_for_round, timeout):
    """What the nested benches share: --rounds N (default 2), the release
    vmpod, and one harness run of scenarios_for_round(n) for each round.
    Returns (rounds, runs); exits with the reason where it cannot run."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    rounds = parser.parse_args().rounds
    vmpod = TARGET / "release" / "vmpod"
    if not vmpod.exists():
        sys.exit(f"{vmpod} is missing: cargo build --release first")
    scenarios = [scenario for number in range(rounds) for scenario in scenarios_for_round(number)]
    try:
        return rounds, run(vmpod, *scenarios, timeout=timeout)
    except Unavailable as why:
        sys.exit(f"cannot run: {why}")
