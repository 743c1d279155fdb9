"""The VM's definition from the Kubernetes API, and its status there: the
real vmpod binary against a fake API server (tests/fakekube.py) through a
kubeconfig, as it would run in a pod; kubectl against the same server
shows that the fake speaks the API kubectl speaks."""

import json
import os
import socket
import pathlib
import shutil
import subprocess
import time

import pytest
import yaml

import harness
from conftest import not_here
from fakekube import FakeKube, ca_file

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    out = tmp_path_factory.mktemp("guests")
    subprocess.run(["sh", REPO / "guests/build.sh", out], check=True)
    return out


def manifest(name):
    return list(yaml.safe_load_all((REPO / "manifests" / name).read_text()))


@pytest.fixture
def fake(tmp_path):
    server = FakeKube()
    server.install_crd(manifest("crd.yaml")[0])  # the project's CRD gives kubectl its columns
    server.kubeconfig(tmp_path / "kubeconfig", namespace="lab")
    yield server
    server.stop()


def kubectl(tmp_path, *args, check=True):
    binary = shutil.which("kubectl")
    if binary is None:
        not_here("kubectl is not installed")
    result = subprocess.run([binary, "--kubeconfig", tmp_path / "kubeconfig", *args],
                            capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def vm_object(name, kernel, kind="VirtualMachine", namespace="lab", **spec):
    domain = {
        "memory": {"guest": "16Mi"},
        "firmware": {"kernelBoot": {"container": {"kernelPath": str(kernel)}}},
        "devices": {"autoattachPodInterface": False, "autoattachGraphicsDevice": False},
    }
    if kind == "VirtualMachineInstance":
        return {"apiVersion": "kubevirt.io/v1", "kind": kind, "metadata": {"name": name, "namespace": namespace},
                "spec": {"domain": domain}}
    return {"apiVersion": "kubevirt.io/v1", "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": {"runStrategy": "Always", **spec, "template": {"spec": {"domain": domain}}}}


def launch(tmp_path, *args, env=None, wait=True, timeout=60, cgroup=None):
    if not pathlib.Path("/dev/kvm").exists():
        not_here("/dev/kvm is missing")
    environment = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "POD_NAMESPACE", "VM_NAME")}
    environment.update({"KUBECONFIG": str(tmp_path / "kubeconfig"), "VMPOD_LOG": "info",
                        "VMPOD_PODINFO_LABELS": str(tmp_path / "no-labels")})
    environment.update(env or {})
    binary = harness.TARGET / "release" / "vmpod"
    command = [binary, "launch", *args, "--run-dir", tmp_path / "run", "--scratch-dir", tmp_path / "scratch",
               "--launch-dir", tmp_path / "no-hooks"]
    if cgroup:  # a private /sys/fs/cgroup holding these files, as a pod's container sees its own
        if os.geteuid() != 0:
            not_here("a private /sys/fs/cgroup needs root")
        setup = " && ".join(["mount -t tmpfs none /sys/fs/cgroup"] +
                            [f"echo '{value}' > /sys/fs/cgroup/{name}" for name, value in cgroup.items()])
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'{setup} && exec "$0" "$@"', *command]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment)
    if not wait:
        return process
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def qmp(run_dir, command):
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(run_dir / "qmp.sock"))
        reader = client.makefile("rb")
        reader.readline()  # the greeting
        for message in ({"execute": "qmp_capabilities"}, {"execute": command}):
            client.sendall(json.dumps(message).encode() + b"\n")
            while "return" not in json.loads(reader.readline()):
                pass


def reasons(fake):
    return [event.get("reason") for event in sorted(fake.events("lab"), key=lambda e: e["metadata"]["resourceVersion"])]


def test_kubectl_reads_the_fake_as_it_reads_a_cluster(fake, tmp_path, guests):
    fake.put(vm_object("demo", guests / "powerbutton.elf"))
    fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "defs", "namespace": "lab"},
              "data": {"vm.yaml": "kind: VirtualMachineInstance"}})
    listed = kubectl(tmp_path, "get", "vm").stdout
    assert listed.split("\n")[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    patch = {"status": {"printableStatus": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    kubectl(tmp_path, "patch", "vm", "demo", "--subresource=status", "--type=merge", "-p", json.dumps(patch))
    row = kubectl(tmp_path, "get", "virtualmachines", "demo").stdout.split("\n")[1].split()
    assert row[0] == "demo" and row[2:] == ["Running", "True"]
    assert json.loads(kubectl(tmp_path, "get", "cm", "defs", "-o", "json").stdout)["data"]["vm.yaml"]
    kubectl(tmp_path, "patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
    assert fake.get("virtualmachines", "demo", "lab")["metadata"]["generation"] == 2
    fake.put({"apiVersion": "events.k8s.io/v1", "kind": "Event",
              "metadata": {"name": "demo.1", "namespace": "lab"}, "reason": "Started", "note": "Started the virtual machine",
              "type": "Normal", "regarding": {"kind": "VirtualMachine", "name": "demo", "namespace": "lab",
                                              "apiVersion": "kubevirt.io/v1", "uid": fake.get("virtualmachines", "demo", "lab")["metadata"]["uid"]}})
    described = kubectl(tmp_path, "describe", "vm", "demo").stdout
    assert "Started" in described and "Started the virtual machine" in described, described
    refused = subprocess.run(["kubectl", "--kubeconfig", fake.kubeconfig(tmp_path / "bad", token="wrong"), "get", "vm"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr


def test_a_vm_from_the_cluster_reports_its_status_and_stops_when_halted(fake, tmp_path, guests):
    fake.put(vm_object("demo", guests / "powerbutton.elf"))
    fake.max_watch_seconds = 1  # watches end and resume, as a real server's do
    vm = launch(tmp_path, "demo", wait=False)
    status = lambda: (fake.get("virtualmachines", "demo", "lab") or {}).get("status", {})  # noqa: E731
    wait_for(lambda: status().get("printableStatus") == "Running", "status Running")
    assert status()["ready"] is True and status()["created"] is True
    assert status()["observedGeneration"] == 1
    wait_for(lambda: "Started" in reasons(fake), "the Started event")
    row = kubectl(tmp_path, "get", "vm", "demo").stdout.split("\n")[1].split()
    assert row[2:] == ["Running", "True"]
    assert "Started the virtual machine" in kubectl(tmp_path, "describe", "vm", "demo").stdout
    qmp(tmp_path / "run", "stop")
    wait_for(lambda: status().get("printableStatus") == "Paused", "status Paused")
    paused = [c for c in status()["conditions"] if c["type"] == "Paused"]
    assert paused and paused[0]["status"] == "True" and status()["ready"] is False
    qmp(tmp_path / "run", "cont")
    wait_for(lambda: status().get("printableStatus") == "Running", "status Running again")
    kubectl(tmp_path, "patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"template":{"metadata":{"labels":{"tier":"web"}}}}}')
    wait_for(lambda: status().get("desiredGeneration") == 2, "the new generation in the status")
    assert status()["observedGeneration"] == 1, "the running VM is still the first generation's"
    fake.compact()  # the next watch's resourceVersion is too old: 410 Gone
    time.sleep(1.5)
    kubectl(tmp_path, "patch", "vm", "demo", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
    out, err = vm.communicate(timeout=60)
    assert vm.returncode == 0, err
    assert "spec changed (generation 2): it applies at the next start" in err, err
    assert "pressing the power button" in err, err
    assert status()["printableStatus"] == "Stopped" and status()["ready"] is False
    assert status()["runStrategy"] == "Halted"
    assert reasons(fake)[-2:] == ["ShuttingDown", "Stopped"], reasons(fake)
    row = kubectl(tmp_path, "get", "vm", "demo").stdout.split("\n")[1].split()
    assert row[2:] == ["Stopped", "False"]


def test_the_name_comes_from_the_pods_label_and_status_needs_rbac(fake, tmp_path, guests):
    fake.put(vm_object("web", guests / "poweroff.elf"))
    fake.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-pod", "namespace": "lab",
                                                               "labels": {"vmpod.io/vm": "web"}}})
    fake.forbid("patch", "virtualmachines/status")
    code, _, err = launch(tmp_path, env={"POD_NAME": "web-pod", "POD_NAMESPACE": "lab"})
    assert code == 0, err
    assert "the pod's label vmpod.io/vm" in err
    assert err.count("without reporting the VM's status") == 1
    assert "`patch` verb on `virtualmachines/status.kubevirt.io`" in err
    assert "status" not in fake.get("virtualmachines", "web", "lab")


def test_the_projects_rbac_grants_everything_vmpod_asks_for(fake, tmp_path, guests):
    roles = [doc for doc in manifest("rbac.yaml") if doc["kind"] in ("Role", "ClusterRole")]
    fake.enforce_rbac(roles)
    definition = vm_object("web", guests / "powerbutton.elf")
    del definition["spec"]["template"]["spec"]["domain"]["memory"]
    definition["spec"]["instancetype"] = {"name": "u1.nano"}
    definition["spec"]["preference"] = {"name": "mine", "kind": "VirtualMachinePreference"}
    fake.put(definition)
    fake.put({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
              "metadata": {"name": "mine", "namespace": "lab"}, "spec": {"devices": {"preferredRng": {}}}})
    fake.put({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-pod", "namespace": "lab",
                                                               "labels": {"vmpod.io/vm": "web"}}})
    vm = launch(tmp_path, env={"POD_NAME": "web-pod", "POD_NAMESPACE": "lab"}, wait=False)
    status = lambda: (fake.get("virtualmachines", "web", "lab") or {}).get("status", {})  # noqa: E731
    wait_for(lambda: status().get("printableStatus") == "Running", "status Running")
    fake.patch("virtualmachines", "web", {"spec": {"running": False, "runStrategy": None}}, "lab")
    out, err = vm.communicate(timeout=60)
    assert vm.returncode == 0, err
    assert "1 vCPU, 512Mi memory" in err, err  # u1.nano, from the bundled copy (the fake serves none)
    assert fake.denied == [], fake.denied
    assert reasons(fake) == ["Started", "ShuttingDown", "Stopped"], reasons(fake)


def test_the_status_helper_counts_against_the_pods_memory_limit(fake, tmp_path, guests):
    fake.put(vm_object("demo", guests / "poweroff.elf"))
    limit = {"memory.max": str(36 << 20)}  # 16Mi guest + 16Mi vmpod fits; + 8Mi for the helper does not
    code, _, err = launch(tmp_path, "demo", cgroup=limit)
    assert code == 1, err
    assert "guest memory (16Mi) plus vmpod's overhead (24Mi) does not fit the container's memory limit (36Mi" in err, err
    assert fake.get("virtualmachines", "demo", "lab")["status"]["printableStatus"] == "Stopped"
    failed = [e for e in fake.events("lab") if e["reason"] == "SyncFailed"]
    assert len(failed) == 1 and failed[0]["type"] == "Warning" and "does not fit" in failed[0]["note"], failed
    assert reasons(fake)[-1] == "Stopped"
    vmi = vm_object("alone", guests / "poweroff.elf", kind="VirtualMachineInstance")
    fake.put(vmi)  # nothing to report for an instance: no helper stays
    code, _, err = launch(tmp_path, "alone", cgroup=limit)
    assert code == 0, err


def test_events_fall_back_to_the_core_group(fake, tmp_path, guests):
    fake.put(vm_object("old", guests / "poweroff.elf"))
    fake.forbid("create", "events", group="events.k8s.io")
    code, _, err = launch(tmp_path, "old")
    assert code == 0, err
    assert "without recording Events" not in err, err
    recorded = fake.events("lab")
    assert {e["apiVersion"] for e in recorded} == {"v1"}, recorded
    assert [e["reason"] for e in sorted(recorded, key=lambda e: e["metadata"]["resourceVersion"])] == ["Started", "Stopped"]
    assert all(e["involvedObject"]["kind"] == "VirtualMachine" and e["involvedObject"]["name"] == "old" for e in recorded)
    fake.forbid("create", "events", group="")
    code, _, err = launch(tmp_path, "old")
    assert code == 0, err
    assert err.count("vmpod goes on without recording Events") == 1, err


def test_in_a_file_of_several_vms_the_pods_label_chooses(tmp_path, guests):
    first = vm_object("first", guests / "poweroff.elf", kind="VirtualMachineInstance")
    second = vm_object("second", guests / "poweroff.elf", kind="VirtualMachineInstance")
    definitions = tmp_path / "vms.json"
    definitions.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [first, second]}))
    labels = tmp_path / "labels"
    labels.write_text('vmpod.io/vm="second"\n')
    no_cluster = {"KUBECONFIG": "", "HOME": str(tmp_path)}
    code, _, err = launch(tmp_path, "--file", definitions, env={**no_cluster, "VMPOD_PODINFO_LABELS": str(labels)})
    assert code == 0, err
    assert "starting VM lab/second" in err and "named by the pod's label vmpod.io/vm" in err, err
    code, _, err = launch(tmp_path, "--file", definitions, env=no_cluster)
    assert code == 2 and "2 VM definitions; choose one with vmpod launch NAME" in err, err


def test_downward_api_labels_make_a_replica_with_its_own_identity(fake, tmp_path, guests):
    fake.put(vm_object("web", guests / "poweroff.elf"))
    labels = tmp_path / "labels"
    labels.write_text('app="web"\nvmpod.io/vm="web"\npod-template-hash="7d9f8c6b5"\n')
    code, _, err = launch(tmp_path, env={"POD_NAME": "web-7d9f8c6b5-x2k4p", "VMPOD_PODINFO_LABELS": str(labels)})
    assert code == 0, err
    assert "starting VM lab/web-7d9f8c6b5-x2k4p" in err
    assert "status" not in fake.get("virtualmachines", "web", "lab"), "a replica does not report the shared VM's status"


def test_configmap_and_instancetypes_from_the_cluster(fake, tmp_path, guests):
    definition = vm_object("small", guests / "poweroff.elf")
    del definition["spec"]["template"]["spec"]["domain"]["memory"]
    definition["spec"]["instancetype"] = {"name": "tiny", "kind": "VirtualMachineInstancetype"}
    fake.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "defs", "namespace": "lab"},
              "data": {"vm.yaml": json.dumps(definition)}})
    fake.put({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineInstancetype",
              "metadata": {"name": "tiny", "namespace": "lab"}, "spec": {"cpu": {"guest": 2}, "memory": {"guest": "24Mi"}}})
    code, _, err = launch(tmp_path, "--configmap", "defs/vm.yaml")
    assert code == 0, err
    assert "tiny from the cluster" in err and "2 vCPUs, 24Mi memory" in err
    code, _, err = launch(tmp_path, "--configmap", "defs/other.yaml")
    assert code == 2 and 'ConfigMap lab/defs has no key "other.yaml"' in err


def test_a_definition_from_an_https_url(fake, tmp_path, guests):
    fake.files["vm.yaml"] = json.dumps(vm_object("fetched", guests / "poweroff.elf", kind="VirtualMachineInstance"))
    env = {"SSL_CERT_FILE": str(ca_file()), "KUBECONFIG": ""}
    code, _, err = launch(tmp_path, "--url", f"{fake.url}/files/vm.yaml", env=env)
    assert code == 0, err
    assert "starting VM lab/fetched" in err
    code, _, err = launch(tmp_path, "--url", f"{fake.url}/files/none.yaml", env=env)
    assert code == 2 and "404" in err, err
    code, _, err = launch(tmp_path, "--url", f"http://127.0.0.1:1/vm.yaml", env=env)
    assert code == 2 and "must be https://HOST/PATH" in err, err


def test_no_definition_and_a_bad_definition_each_say_what_to_fix(fake, tmp_path, guests):
    code, _, err = launch(tmp_path, "demo", env={"KUBECONFIG": "", "HOME": str(tmp_path)})
    assert code == 2
    assert "no Kubernetes API is configured" in err and "--file" in err, err
    broken = vm_object("broken", guests / "poweroff.elf")
    broken["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "lots"
    fake.put(broken)
    code, _, err = launch(tmp_path, "broken")
    assert code == 2
    # One problem, one line.
    [line] = [line for line in err.splitlines() if "VirtualMachine lab/broken" in line]
    assert "VirtualMachine lab/broken: spec.template.spec.domain.memory.guest:" in line, err


@pytest.mark.parametrize("case", ["401", "403", "404", "no-crd", "slow"])
def test_api_failures_end_with_one_clear_line(fake, tmp_path, guests, case):
    fake.put(vm_object("demo", guests / "poweroff.elf"))
    env = {}
    if case == "401":
        fake.kubeconfig(tmp_path / "kubeconfig", namespace="lab", token="expired")
        expected = "refused vmpod's credentials (401 Unauthorized)"
    elif case == "403":
        fake.forbid("get", "virtualmachines")
        expected = 'get virtualmachines.kubevirt.io "demo" in namespace lab: forbidden (403): grant the pod\'s service account the `get` verb on `virtualmachines.kubevirt.io`'
    elif case == "404":
        expected = 'no VirtualMachine or VirtualMachineInstance named "nothere" in namespace lab'
    elif case == "no-crd":
        fake.unserved.add("kubevirt.io")
        expected = "does not serve kubevirt.io/v1 virtualmachines (is KubeVirt's CRD installed?"
    else:
        fake.delays[("get", "virtualmachines")] = 2
        env["VMPOD_API_TIMEOUT"] = "0.3"
        expected = "did not answer after 4 attempts: no answer within 300ms"
    code, _, err = launch(tmp_path, "nothere" if case == "404" else "demo", env=env)
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and expected in errors[0], err
