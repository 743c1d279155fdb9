#!/usr/bin/env python3
"""The demo VM's pod with podman, beside the image's own start, in one run:

  podman kube play manifests/pod.yaml -> the guest's first serial byte
  podman kube play of a pod running the same image's `vmpod --version`
    -> its output (what any container of this image costs to start)
  the difference (vmpod's part: definition, KVM, boot), and the image's size

Times come from the log lines' own timestamps (conmon stamps each line as
it reads it), measured from just before `podman kube play` starts. Prints
medians; asserts nothing. Needs root, podman and /dev/kvm (as ./scripts/test
or ./scripts/demo set them up); builds the images first.

usage: benches/pod_start.py [--rounds N]
"""

import argparse
import datetime
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
IMAGE = "localhost/vmpod:latest"


def podman(*args):
    return subprocess.run(["podman", *args], capture_output=True, text=True)


def first_stdout_at(log, deadline):
    """The timestamp of the first stdout line of a k8s-file log."""
    while time.time() < deadline:
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                stamp, stream, _ = line.split(" ", 2)
                if stream == "stdout":
                    return datetime.datetime.fromisoformat(stamp[:26] + stamp[-6:]).timestamp()
        time.sleep(0.005)
    sys.exit(f"no output in {log} in time")


def play_once(documents, directory, name):
    manifest = directory / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    log = directory / f"{name}.log"
    log.unlink(missing_ok=True)
    started = time.time()
    played = podman("kube", "play", "--log-driver", "k8s-file", "--log-opt", f"path={log}", str(manifest))
    if played.returncode != 0:
        sys.exit(f"podman kube play failed: {played.stderr}")
    seconds = first_stdout_at(log, started + 60) - started
    podman("kube", "down", str(manifest))
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    built = subprocess.run([REPO / "images/build-image.sh"], capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"images/build-image.sh failed:\n{built.stdout}{built.stderr}")
    vm = list(yaml.safe_load_all((REPO / "manifests/pod.yaml").read_text()))
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bench-image-start"},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": IMAGE, "args": ["--version"]}]}}
    times = {"vm": [], "image": []}
    with tempfile.TemporaryDirectory(prefix="vmpod-bench-") as directory:
        directory = pathlib.Path(directory)
        for _ in range(rounds):
            times["image"].append(play_once([bare], directory, "image"))
            times["vm"].append(play_once(vm, directory, "vm"))
    vm_median = statistics.median(times["vm"])
    image_median = statistics.median(times["image"])
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"pod start with podman, median of {rounds} (ms):")
    print(f"  kube play -> the demo guest's first serial byte   {vm_median * 1000:7.0f}")
    print(f"  kube play -> `vmpod --version` in the same image  {image_median * 1000:7.0f}  (the image's start)")
    print(f"  difference (vmpod: definition, checks, KVM, boot)  {(vm_median - image_median) * 1000:7.0f}")
    print(f"image {IMAGE}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
