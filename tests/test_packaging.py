"""The shipped packaging: zarf.yaml against the fields Zarf defines (its
package schema, zarf.dev/v1alpha1), the images it carries against every
image the manifests it deploys run, the kustomization as kubectl renders
it, and manifests/debian-cloud-pod.yaml as `vmpod render --pod` prints it."""

import re
import shutil
import subprocess

import pytest
import yaml

import harness

REPO = harness.REPO
NAME = re.compile(r"^[a-z0-9][a-z0-9\-]*$")

# The fields Zarf's package schema allows at each level (additionalProperties
# is false everywhere; keys starting with "x-" are extensions), and the
# required ones.
FIELDS = {
    "package": ({"apiVersion", "kind", "metadata", "build", "components", "constants", "variables"},
                {"kind", "components"}),
    "metadata": ({"name", "description", "version", "url", "image", "uncompressed", "architecture", "yolo",
                  "authors", "documentation", "source", "vendor", "aggregateChecksum"}, {"name"}),
    "component": ({"name", "description", "default", "required", "only", "group", "cosignKeyPath", "import",
                   "manifests", "charts", "dataInjections", "files", "images", "repos", "extensions", "scripts",
                   "actions"}, {"name"}),
    "manifest": ({"name", "namespace", "files", "kustomizeAllowAnyDirectory", "kustomizations", "noWait"},
                 {"name"}),
    "file": ({"source", "shasum", "target", "executable", "symlinks", "extractPath"}, {"source", "target"}),
}


def check_fields(level, mapping, where):
    allowed, required = FIELDS[level]
    assert isinstance(mapping, dict), f"{where} must be a mapping"
    unknown = {key for key in mapping if key not in allowed and not key.startswith("x-")}
    assert not unknown, f"{where}: fields Zarf does not define: {sorted(unknown)}"
    missing = required - set(mapping)
    assert not missing, f"{where}: required by Zarf: {sorted(missing)}"


def pod_images(documents):
    """Every image the pods of these manifests run or mount."""
    images = set()
    for document in documents:
        if not document:
            continue
        spec = document.get("spec", {})
        pod = spec.get("template", {}).get("spec") if document["kind"] in ("Deployment", "StatefulSet") else spec
        if document["kind"] not in ("Pod", "Deployment", "StatefulSet"):
            continue
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            images.add(container["image"])
        for volume in pod.get("volumes", []):
            if "image" in volume:
                images.add(volume["image"]["reference"])
    return images


def kustomize(directory):
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render the kustomization (scripts/test installs it)")
    rendered = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    return list(yaml.safe_load_all(rendered.stdout))


def test_zarf_yaml_uses_only_fields_zarf_defines_and_carries_every_image_it_deploys():
    package = yaml.safe_load((REPO / "zarf.yaml").read_text())
    check_fields("package", package, "zarf.yaml")
    assert package["kind"] == "ZarfPackageConfig"
    check_fields("metadata", package["metadata"], "metadata")
    assert NAME.match(package["metadata"]["name"])
    assert package["components"], "Zarf needs at least one component"
    carried, deployed = set(), set()
    for index, component in enumerate(package["components"]):
        where = f"components[{index}]"
        check_fields("component", component, where)
        assert NAME.match(component["name"]), where
        assert all(isinstance(image, str) for image in component.get("images", [])), where
        carried.update(component.get("images", []))
        for number, manifest in enumerate(component.get("manifests", [])):
            check_fields("manifest", manifest, f"{where}.manifests[{number}]")
            for path in manifest.get("files", []):
                assert (REPO / path).is_file(), f"{where}: {path} is missing"
                deployed |= pod_images(yaml.safe_load_all((REPO / path).read_text()))
            for path in manifest.get("kustomizations", []):
                assert (REPO / path / "kustomization.yaml").is_file(), f"{where}: {path} is no kustomization"
                deployed |= pod_images(kustomize(REPO / path))
        for number, file in enumerate(component.get("files", [])):
            check_fields("file", file, f"{where}.files[{number}]")
    assert deployed, "the package deploys no pods"
    # An air-gapped cluster can pull only what the package carries.
    assert deployed <= carried, f"deployed but not carried: {sorted(deployed - carried)}"


def test_the_kustomization_renders_rbac_the_definition_the_replicas_and_the_services():
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in kustomize(REPO / "manifests"))
    assert ("ConfigMap", "demo-tiny") in kinds
    assert ("Deployment", "demo-tiny") in kinds
    assert ("Role", "vmpod") in kinds and ("ServiceAccount", "vmpod") in kinds
    assert ("Service", "demo-tiny") in kinds and ("Service", "debian-cloud-ssh") in kinds


def test_configmaps_carry_the_demo_vm_as_manifests_demo_tiny_yaml_defines_it():
    demo = yaml.safe_load((REPO / "manifests/demo-tiny.yaml").read_text())
    for name in ("configmap.yaml", "pod.yaml"):
        configmap = next(doc for doc in yaml.safe_load_all((REPO / "manifests" / name).read_text())
                         if doc["kind"] == "ConfigMap")
        assert yaml.safe_load(configmap["data"]["vm.yaml"]) == demo, name


def test_services_select_the_pods_of_their_vms():
    services = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((REPO / "manifests/service.yaml").read_text())}
    pod_labels = []
    for name in ("pod.yaml", "deployment.yaml", "statefulset.yaml", "debian-cloud-pod.yaml"):
        for doc in yaml.safe_load_all((REPO / "manifests" / name).read_text()):
            if doc["kind"] == "Pod":
                pod_labels.append(doc["metadata"]["labels"])
            elif doc["kind"] in ("Deployment", "StatefulSet"):
                pod_labels.append(doc["spec"]["template"]["metadata"]["labels"])
    for name, service in services.items():
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), f"Service {name} selects no pod"
    # debian-cloud's SSH port is one its interface lists, which passt forwards.
    vm = yaml.safe_load((REPO / "manifests/debian-cloud.yaml").read_text())
    ports = {p["port"] for i in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] for p in i["ports"]}
    assert services["debian-cloud-ssh"]["spec"]["ports"][0]["targetPort"] in ports


def test_debian_cloud_pod_yaml_is_what_render_pod_prints(vmpod_binary):
    rendered = subprocess.run([vmpod_binary, "render", "--pod", "manifests/debian-cloud.yaml"],
                              cwd=REPO, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    shipped = (REPO / "manifests/debian-cloud-pod.yaml").read_text()
    header = "".join(line for line in shipped.splitlines(keepends=True) if line.startswith("#"))
    assert shipped == header + rendered.stdout, "regenerate manifests/debian-cloud-pod.yaml with vmpod render --pod"
