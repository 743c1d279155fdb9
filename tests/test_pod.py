"""The pod itself, for real with podman as root (`podman exec` stands in for
`kubectl exec`): the image images/build-image.sh builds, the project's
manifests as shipped, the /vm helpers in the pod, replicas with their own
identities, graceful deletion, and the one log line a pod that cannot run
ends with."""

import copy
import json
import os
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import not_here
import harness

REPO = harness.REPO
MANIFESTS = REPO / "manifests"
IMAGE = "localhost/vmpod:latest"
DEMO_IMAGE = "localhost/vmpod-demo:latest"
BANNER = "type and it echoes"


def podman(*args, input=None, timeout=120):
    return subprocess.run(["podman", *args], input=input, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def images():
    """Builds both images once; returns what the build printed (their sizes)."""
    if os.geteuid() != 0:
        not_here("the podman tests run podman as root")
    if not os.path.exists("/dev/kvm"):
        not_here("no /dev/kvm, so no pod can boot a VM")
    if shutil.which("podman") is None and os.environ.get("CI") != "true":
        not_here("podman is not installed (scripts/test installs it)")
    built = subprocess.run([REPO / "images/build-image.sh"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return built.stdout


@pytest.fixture
def play(images, tmp_path):
    """play(documents) runs `podman kube play` on them; every play is taken
    down (`podman kube down`) when the test ends."""
    played = []

    def run(documents, *options):
        # A pod of the same name left running (by ./scripts/demo) would
        # make the play fail.
        for document in documents:
            if document["kind"] == "Pod":
                podman("pod", "rm", "--force", "--ignore", document["metadata"]["name"])
        path = tmp_path / f"play-{len(played)}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        played.append(path)
        result = podman("kube", "play", *options, str(path))
        assert result.returncode == 0, result.stderr
        return path

    yield run
    for path in reversed(played):
        podman("kube", "down", str(path))


def manifest(name):
    return list(yaml.safe_load_all((MANIFESTS / name).read_text()))


def logs(container):
    result = podman("logs", container)
    return result.stdout + result.stderr


def wait_for_log(container, text, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = logs(container)
        if text in seen:
            return seen
        time.sleep(0.3)
    pytest.fail(f"{container} never logged {text!r}; its log:\n{logs(container)}")


def wait_for_exit(container, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = podman("inspect", container, "--format", "{{.State.Status}} {{.State.ExitCode}}").stdout.split()
        if state and state[0] in ("exited", "stopped"):
            return int(state[1])
        time.sleep(0.3)
    pytest.fail(f"{container} did not end; its log:\n{logs(container)}")


def qmp(container, *commands):
    """Runs QMP commands through `podman exec -i … /vm/qmp`; their replies."""
    lines = [{"execute": "qmp_capabilities"}] + [{"execute": c} for c in commands]
    result = podman("exec", "-i", container, "/vm/qmp", input="".join(json.dumps(line) + "\n" for line in lines))
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    answers = [reply["return"] for reply in replies if "return" in reply]
    assert len(answers) == len(lines), result.stdout
    return answers[1:]


def test_the_image_is_small_runs_as_uid_107_and_has_the_helpers(images):
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    assert size < 40 * 1024 * 1024, f"{IMAGE} is {size} bytes"
    assert podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip() == "107:107"
    version = podman("run", "--rm", IMAGE, "--version")
    assert version.returncode == 0 and version.stdout.startswith("vmpod "), version.stderr
    # A shell for hooks and for kubectl exec -it POD -- sh.
    shell = podman("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c", "id -u; echo \"$PATH\"")
    assert shell.stdout.split() == ["107", "/usr/bin:/bin:/vm"], shell.stdout + shell.stderr
    passt = podman("run", "--rm", "--entrypoint", "/usr/bin/passt", IMAGE, "--version")
    assert "passt" in passt.stdout + passt.stderr
    # Each /vm helper is vmpod under another name: /vm/ready says the VM is not up.
    ready = podman("run", "--rm", "--entrypoint", "/vm/ready", IMAGE)
    assert ready.returncode == 1 and "not ready" in ready.stderr, ready.stderr


def test_pod_yaml_boots_the_demo_vm_and_the_helpers_work_through_exec(play):
    play(manifest("pod.yaml"))
    log = wait_for_log("demo-tiny-vm", BANNER)
    assert "starting VM default/demo-tiny (1 vCPU, 16Mi memory" in log, log
    assert podman("top", "demo-tiny-vm", "huser").stdout.split()[1:] == ["107"]  # uid 107 on the host too (rootful)

    ready = podman("exec", "demo-tiny-vm", "/vm/ready")
    assert ready.returncode == 0 and ready.stdout.strip() == "ready", ready.stderr
    serial = podman("exec", "-i", "demo-tiny-vm", "/vm/serial", input="hello from podman exec\n")
    assert serial.returncode == 0, serial.stderr
    assert "hello from podman exec" in serial.stdout, serial.stdout
    status, name = qmp("demo-tiny-vm", "query-status", "query-name")
    assert status["status"] == "running" and name["name"] == "demo-tiny"
    monitor = podman("exec", "-i", "demo-tiny-vm", "/vm/monitor", input="info status\n")
    assert "VM status: running" in monitor.stdout, monitor.stdout + monitor.stderr
    # What the guest echoed reaches the pod's log (kubectl logs -f).
    assert "hello from podman exec" in wait_for_log("demo-tiny-vm", "hello from podman exec")


def test_stopping_the_pod_powers_the_guest_off_within_its_grace_period(play):
    # As Kubernetes deletes a pod: SIGTERM, then SIGKILL after the pod's
    # terminationGracePeriodSeconds. (podman kube down before podman 5.1
    # sends SIGKILL at once, podman#22397: stop the pod first.)
    path = play(manifest("pod.yaml"))
    wait_for_log("demo-tiny-vm", BANNER)
    grace = manifest("pod.yaml")[1]["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    stop = podman("pod", "stop", "--time", str(grace), "demo-tiny")
    assert stop.returncode == 0, stop.stderr
    assert time.monotonic() - started < grace
    assert wait_for_exit("demo-tiny-vm") == 0
    seen = logs("demo-tiny-vm")
    assert "SIGTERM: pressing the ACPI power button" in seen, seen
    assert "echo guest: power button pressed, powering off" in seen, seen
    assert "vmpod: info: the guest powered off" in seen, seen
    assert podman("kube", "down", str(path)).returncode == 0


def replica_pod(template, name, labels):
    """A pod as a controller makes it from its template, labels and all
    (podman kube play names a Deployment's pods NAME-pod-N without the
    labels a ReplicaSet adds, and runs no StatefulSet)."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {**template["metadata"]["labels"], **labels}},
           "spec": copy.deepcopy(template["spec"])}
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def with_pod_network(configmap):
    """The demo VM with a pod network NIC, so that each replica's MAC shows."""
    vm = yaml.safe_load(configmap["data"]["vm.yaml"])
    devices = vm["spec"]["template"]["spec"]["domain"]["devices"]
    devices.pop("autoattachPodInterface")
    devices["interfaces"] = [{"name": "default", "masquerade": {}}]
    vm["spec"]["template"]["spec"]["networks"] = [{"name": "default", "pod": {}}]
    configmap = copy.deepcopy(configmap)
    configmap["data"]["vm.yaml"] = yaml.safe_dump(vm, sort_keys=False)
    return configmap


def identity(container):
    log = wait_for_log(container, BANNER)
    name, uuid = qmp(container, "query-name", "query-uuid")
    macs = [line.split("MAC ")[1] for line in log.splitlines() if "virtio-net, MAC" in line]
    return name["name"], uuid["UUID"], macs


def test_two_replicas_of_a_deployment_get_their_own_names_uuids_and_macs(play):
    [configmap] = manifest("configmap.yaml")
    [deployment] = manifest("deployment.yaml")
    template = deployment["spec"]["template"]
    pods = [replica_pod(template, f"demo-tiny-5d9c7b6f4-{suffix}", {"pod-template-hash": "5d9c7b6f4"})
            for suffix in ("x2k4q", "m7wzp")]
    # One play per replica, each after the previous VM has read its
    # definition: podman 4 rewrites a ConfigMap's volume in place for every
    # pod of a play, so a replica starting meanwhile could read it half
    # written (the kubelet swaps a ConfigMap's files atomically).
    seen = []
    for pod in pods:
        play([with_pod_network(configmap), pod])
        seen.append(identity(pod["metadata"]["name"] + "-vm"))
    first, second = seen
    assert first[0] == "demo-tiny-5d9c7b6f4-x2k4q" and second[0] == "demo-tiny-5d9c7b6f4-m7wzp"
    assert first[1] != second[1]
    assert len(first[2]) == 1 and len(second[2]) == 1 and first[2] != second[2], (first, second)


def test_a_statefulset_member_is_the_same_vm_after_rescheduling(play, tmp_path):
    [configmap] = manifest("configmap.yaml")
    [statefulset] = manifest("statefulset.yaml")
    name = "demo-tiny-set-1"
    pod = replica_pod(statefulset["spec"]["template"], name,
                      {"statefulset.kubernetes.io/pod-name": name, "apps.kubernetes.io/pod-index": "1"})
    seen = []
    for _ in range(2):  # the pod, then the same pod again (rescheduled)
        path = play([with_pod_network(configmap), pod])
        seen.append(identity(f"{name}-vm"))
        assert podman("kube", "down", str(path)).returncode == 0
    assert seen[0][0] == "demo-tiny-set-1"  # the pod's name starts with the VM's
    assert seen[0] == seen[1]


def failing_pod(change):
    """pod.yaml, changed; it runs once, and its log is returned."""
    configmap, pod = manifest("pod.yaml")
    pod["spec"]["restartPolicy"] = "Never"
    change(configmap, pod)
    return [configmap, pod]


def without(listing, name):
    return [item for item in listing if item["name"] != name]


@pytest.mark.parametrize("case, change, expected", [
    ("memory-limit", lambda c, p: p["spec"]["containers"][0]["resources"].update(limits={"memory": "24Mi"}),
     ["memory", "24"]),
    ("no-kvm", lambda c, p: (p["spec"].update(volumes=without(p["spec"]["volumes"], "kvm")),
                             p["spec"]["containers"][0].update(
                                 volumeMounts=without(p["spec"]["containers"][0]["volumeMounts"], "kvm"))),
     ["/dev/kvm"]),
    ("no-definition", lambda c, p: (p["spec"].update(volumes=without(p["spec"]["volumes"], "definition")),
                                    p["spec"]["containers"][0].update(
                                        volumeMounts=without(p["spec"]["containers"][0]["volumeMounts"],
                                                             "definition"))),
     ["definition", "/etc/vmpod/vm.yaml"]),
    ("bad-definition", lambda c, p: c["data"].update({"vm.yaml": c["data"]["vm.yaml"].replace("guest: 16Mi", "guest: lots")}),
     ["memory.guest", "lots"]),
])
def test_a_pod_that_cannot_run_ends_with_one_line_saying_what_to_fix(play, case, change, expected):
    play(failing_pod(change))
    code = wait_for_exit("demo-tiny-vm")
    log = logs("demo-tiny-vm")
    errors = [line for line in log.splitlines() if line.startswith("vmpod: error:")]
    assert code in (1, 2), log
    assert len(errors) == 1, log
    for word in expected:
        assert word in errors[0], log


def render_pod(definition, *options):
    rendered = subprocess.run([harness.TARGET / "release/vmpod", "render", "--pod", str(MANIFESTS / definition),
                               *options], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    return list(yaml.safe_load_all(rendered.stdout))


def test_render_pod_of_the_demo_vm_runs_in_podman(play):
    documents = render_pod("demo-tiny.yaml", "--image", DEMO_IMAGE)
    assert [doc["kind"] for doc in documents] == ["ConfigMap", "Pod"]
    play(documents)
    wait_for_log("demo-tiny-vm", BANNER)
    assert podman("exec", "demo-tiny-vm", "/vm/ready").returncode == 0


@pytest.fixture(scope="session")
def debian_containerdisk(images):
    """The Debian cloud image (images/build-debian-cloud.sh) as a
    containerDisk image FROM scratch, under the name manifests/debian-cloud.yaml
    pulls (no registry is reachable here; the local tag stands in)."""
    cache = harness.TARGET / "nested/cloud"
    built = subprocess.run([REPO / "images/build-debian-cloud.sh", cache], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    context = harness.TARGET / "containerdisk"
    shutil.rmtree(context, ignore_errors=True)
    (context / "disk").mkdir(parents=True)
    os.link(cache / "debian-12-cloud.qcow2", context / "disk/debian-12-cloud.qcow2")
    (context / "Containerfile").write_text("FROM scratch\nCOPY disk/ /disk/\n")
    tag = "quay.io/containerdisks/debian:12"
    result = podman("build", "--quiet", "--tag", tag, str(context), timeout=600)
    assert result.returncode == 0, result.stderr
    return tag


def test_render_pod_copies_a_containerdisk_in_init_containers_and_vmpod_boots_its_kernel(play, debian_containerdisk):
    documents = render_pod("debian-cloud.yaml", "--copy-images")
    pod = documents[1]
    assert [c["image"] for c in pod["spec"]["initContainers"]] == [IMAGE, debian_containerdisk]
    assert pod["spec"]["restartPolicy"] == "Always"  # runStrategy: Always
    # podman 4 restarts finished init containers under Always, then fails
    # removing them; Kubernetes does not.
    pod["spec"]["restartPolicy"] = "OnFailure"
    play(documents)
    log = wait_for_log("debian-cloud-vm", "disk root: booting", timeout=180)
    assert f"disk root: the image {debian_containerdisk} is mounted at /vm/images/root" in log, log
    assert "booting /boot/vmlinuz-" in log, log
    # (podman removes init containers once they have run, logs and all.)
    assert "using /vm/images/root/disk" in log, log
    # The image stays read-only; the guest writes to an overlay.
    assert "guest writes go to /vm/scratch/root.overlay.qcow2" in log, log


def test_launch_d_hooks_run_in_the_image_before_boot(play):
    # The example hooks the image carries, run from there: a ConfigMap of
    # hooks needs defaultMode 0755, which podman 4 ignores (Kubernetes
    # honours it), and must not be mounted below the definition's
    # read-only /etc/vmpod, hence VMPOD_LAUNCH_DIR.
    configmap, pod = manifest("pod.yaml")
    pod["spec"]["containers"][0]["env"].append({"name": "VMPOD_LAUNCH_DIR", "value": "/usr/share/vmpod/launch.d"})
    play([configmap, pod])
    log = wait_for_log("demo-tiny-vm", BANNER)
    assert "launch.d/10-describe-vm: VM default/demo-tiny (uuid " in log, log
    assert "1 vCPUs, 16 MiB, boots from its kernel" in log, log
    assert "launch.d/50-require-scratch-space: scratch directory /vm/scratch: " in log, log


def test_vnc_through_podman_exec_as_with_kubectl_exec(play, tmp_path):
    """The README's VNC recipe with podman exec for kubectl exec: socat
    runs `podman exec -i POD /vm/vnc` per connection, and vncdotool sees
    the display guest's pattern."""
    from test_display import VNCDO, expected_pixel, free_port

    def with_display(configmap, pod):
        vm = configmap["data"]["vm.yaml"]
        vm = vm.replace("/vm/guests/demo.elf", "/vm/guests/display.elf")
        configmap["data"]["vm.yaml"] = vm.replace("autoattachGraphicsDevice: false", "autoattachGraphicsDevice: true")

    configmap, pod = manifest("pod.yaml")
    with_display(configmap, pod)
    play([configmap, pod])
    wait_for_log("demo-tiny-vm", "drew the pattern")
    port = free_port()
    relay = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                              "EXEC:podman exec -i demo-tiny-vm /vm/vnc"])
    try:
        shot = tmp_path / "pod.png"
        captured = subprocess.run([VNCDO, "-s", f"127.0.0.1::{port}", "capture", str(shot)],
                                  capture_output=True, text=True, timeout=120)
        assert captured.returncode == 0, captured.stderr
        from PIL import Image

        pixels = Image.open(shot).convert("RGB").load()
        wrong = [(x, y) for y in range(0, 768, 3) for x in range(0, 1024, 3) if pixels[x, y] != expected_pixel(x, y)]
        assert not wrong, f"{len(wrong)} pixels differ, first at {wrong[0]}"
    finally:
        relay.terminate()
        relay.wait(timeout=10)
