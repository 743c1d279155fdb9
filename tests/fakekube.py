"""A small Kubernetes API server for tests, speaking the real paths and
shapes: discovery (so kubectl works against it), get/list/watch (with
resourceVersion, bookmarks and 410 Gone), merge patches (the status
subresource too), Events in both groups (one store, shown in either form),
Tables for `kubectl get` with KubeVirt's printer columns, bearer-token
authentication (401), per-verb RBAC (403), 404s that tell a missing object
from a missing resource type, and slow answers on request.

Not a Kubernetes: no validation, no admission, one process, in memory.
Tests drive it directly (`server.put`, `server.forbid`, ...)."""

import base64
import copy
import datetime
import itertools
import json
import pathlib
import queue
import re
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# group, version, plural -> kind, namespaced
RESOURCES = {
    ("", "v1", "configmaps"): ("ConfigMap", True),
    ("", "v1", "pods"): ("Pod", True),
    ("", "v1", "events"): ("Event", True),
    ("", "v1", "namespaces"): ("Namespace", False),
    ("events.k8s.io", "v1", "events"): ("Event", True),
    ("kubevirt.io", "v1", "virtualmachines"): ("VirtualMachine", True),
    ("kubevirt.io", "v1", "virtualmachineinstances"): ("VirtualMachineInstance", True),
    ("instancetype.kubevirt.io", "v1beta1", "virtualmachineclusterinstancetypes"): ("VirtualMachineClusterInstancetype", False),
    ("instancetype.kubevirt.io", "v1beta1", "virtualmachineinstancetypes"): ("VirtualMachineInstancetype", True),
    ("instancetype.kubevirt.io", "v1beta1", "virtualmachineclusterpreferences"): ("VirtualMachineClusterPreference", False),
    ("instancetype.kubevirt.io", "v1beta1", "virtualmachinepreferences"): ("VirtualMachinePreference", True),
}
SHORT_NAMES = {"virtualmachines": ["vm", "vms"], "virtualmachineinstances": ["vmi", "vmis"], "configmaps": ["cm"], "events": ["ev"]}
WITH_STATUS = {"virtualmachines", "virtualmachineinstances", "pods"}


_CERTS = None


def certificates():
    """A CA and a server certificate for 127.0.0.1 signed by it (kubectl
    sends tokens only over TLS; rustls wants a CA apart from the server's
    certificate). Made once per test process with openssl."""
    global _CERTS
    if _CERTS is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="fakekube-"))
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)  # noqa: E731
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=fakekube CA")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        (folder / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                    "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "3", "-extfile", "ext")
        _CERTS = folder
    return _CERTS


def ca_file():
    return certificates() / "ca.crt"


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def rfc3339(moment=None):
    return (moment or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def core_event(event):
    """An Event as core v1 shows it (events.k8s.io fields mapped back)."""
    if event.get("apiVersion") == "v1":
        return event
    shown = {
        "apiVersion": "v1", "kind": "Event", "metadata": event["metadata"],
        "involvedObject": event.get("regarding", {}), "reason": event.get("reason", ""),
        "message": event.get("note", ""), "type": event.get("type", "Normal"),
        "source": {"component": event.get("reportingController", "")},
        "reportingComponent": event.get("reportingController", ""),
        "reportingInstance": event.get("reportingInstance", ""),
        "eventTime": event.get("eventTime"), "count": 1,
        "firstTimestamp": None, "lastTimestamp": None,
    }
    return shown


def new_event(event):
    """An Event as events.k8s.io/v1 shows it."""
    if event.get("apiVersion") == "events.k8s.io/v1":
        return event
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": event["metadata"],
        "regarding": event.get("involvedObject", {}), "reason": event.get("reason", ""),
        "note": event.get("message", ""), "type": event.get("type", "Normal"),
        "eventTime": event.get("eventTime") or event.get("firstTimestamp"),
        "reportingController": event.get("reportingComponent") or event.get("source", {}).get("component", ""),
        "reportingInstance": event.get("reportingInstance", ""),
    }


def json_path(obj, path):
    """The JSONPath subset printer columns use: `.a.b` and `[?(@.k=='v')]`."""
    value = obj
    for step in re.findall(r"\.(\w+)|\[\?\(@\.(\w+)=='([^']*)'\)\]", path):
        key, filter_key, filter_value = step
        if key:
            value = value.get(key) if isinstance(value, dict) else None
        else:
            value = next((item for item in value or [] if item.get(filter_key) == filter_value), None)
        if value is None:
            return None
    return value


class FakeKube:
    def __init__(self, token="test-token"):
        self.token = token
        self.lock = threading.Condition()
        self.objects = {}  # (plural, namespace, name) -> object
        self.history = []  # (resourceVersion, type, plural, object)
        self.version = itertools.count(100)
        self.compacted_below = 0
        self.forbidden = set()  # (verb, plural) or (verb, plural, group)
        self.unserved = set()  # groups the server does not serve
        self.delays = {}  # (verb, plural) -> seconds
        self.requests = []  # (method, path, body)
        self.files = {}  # /files/NAME -> text, served without credentials
        self.rbac = None  # when set: the only (group, resource, verb) allowed
        self.denied = []  # (verb, group, resource) refused for lack of RBAC
        self.printer_columns = {}  # plural -> [(name, type, jsonPath)]
        self.bookmark_interval = 1.0
        self.max_watch_seconds = 1800  # a real server ends watches too
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        certs = certificates()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "server.crt", certs / "server.key")
        self.ca = (certs / "ca.crt").read_bytes()
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path, namespace="default", token=None):
        path = pathlib.Path(path)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url,
                                                      "certificate-authority-data": base64.b64encode(self.ca).decode()}}],
            "users": [{"name": "vmpod", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "vmpod", "namespace": namespace}}],
        }))
        return path

    # -- the store -------------------------------------------------------

    def _resource_of(self, plural, group):
        for (g, version, p), (kind, namespaced) in RESOURCES.items():
            if p == plural and g == group:
                return g, version, kind, namespaced
        raise KeyError(plural)

    def put(self, obj):
        """Creates or replaces an object (a test's `kubectl apply`)."""
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = next(p for (g, v, p), (k, _) in RESOURCES.items() if k == obj["kind"] and g == group)
        with self.lock:
            meta = obj.setdefault("metadata", {})
            _, _, _, namespaced = self._resource_of(plural, group)
            if namespaced:
                meta.setdefault("namespace", "default")
            key = (plural, meta.get("namespace"), meta["name"])
            old = self.objects.get(key)
            meta.setdefault("uid", f"uid-{meta['name']}-{next(self.version)}")
            meta.setdefault("creationTimestamp", rfc3339())
            generation = (old or {}).get("metadata", {}).get("generation", 0)
            if old is None or old.get("spec") != obj.get("spec"):
                generation += 1
            meta["generation"] = generation
            self._store(plural, key, obj, "MODIFIED" if old else "ADDED")
            return obj

    def get(self, plural, name, namespace="default"):
        with self.lock:
            return copy.deepcopy(self.objects.get((plural, namespace, name)))

    def patch(self, plural, name, patch, namespace="default", subresource=None):
        with self.lock:
            key = (plural, namespace, name)
            old = self.objects[key]
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = merge_patch(old.get("status", {}), patch.get("status", {}))
            else:
                new = merge_patch(old, {k: v for k, v in patch.items() if k != "status"})
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            self._store(plural, key, new, "MODIFIED")
            return new

    def delete(self, plural, name, namespace="default"):
        with self.lock:
            key = (plural, namespace, name)
            old = self.objects.pop(key)
            rv = str(next(self.version))
            old["metadata"]["resourceVersion"] = rv
            self.history.append((int(rv), "DELETED", plural, copy.deepcopy(old)))
            self.lock.notify_all()

    def compact(self):
        """Forgets the history: watches from an older version get 410 Gone."""
        with self.lock:
            self.compacted_below = next(self.version)
            self.history.clear()

    def events(self, namespace="default"):
        with self.lock:
            return [copy.deepcopy(o) for (p, ns, _), o in self.objects.items() if p == "events" and ns == namespace]

    def _store(self, plural, key, obj, kind):
        rv = str(next(self.version))
        obj["metadata"]["resourceVersion"] = rv
        self.objects[key] = obj
        self.history.append((int(rv), kind, plural, copy.deepcopy(obj)))
        self.lock.notify_all()

    def install_crd(self, crd):
        """Takes a CustomResourceDefinition's printer columns for tables."""
        version = crd["spec"]["versions"][0]
        self.printer_columns[crd["spec"]["names"]["plural"]] = [
            (c["name"], c["type"], c["jsonPath"]) for c in version.get("additionalPrinterColumns", [])]

    def enforce_rbac(self, roles):
        """Allows only what these Roles and ClusterRoles grant."""
        self.rbac = {(group, resource, verb)
                     for role in roles for rule in role.get("rules", [])
                     for group in rule.get("apiGroups", []) for resource in rule.get("resources", [])
                     for verb in rule.get("verbs", [])}

    def forbid(self, verb, plural, group=None):
        self.forbidden.add((verb, plural) if group is None else (verb, plural, group))

    # -- HTTP ------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._serve(self, "GET")

            def do_POST(self):
                fake._serve(self, "POST")

            def do_PATCH(self):
                fake._serve(self, "PATCH")

            def do_PUT(self):
                fake._serve(self, "PUT")

            def do_DELETE(self):
                fake._serve(self, "DELETE")

        return Handler

    def _reply(self, handler, code, body, content_type="application/json"):
        data = json.dumps(body).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _serve(self, handler, method):
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        self.requests.append((method, handler.path, body.decode(errors="replace")))
        if url.path.startswith("/files/"):
            text = self.files.get(url.path[len("/files/"):])
            if text is None:
                return self._reply(handler, 404, {"error": "no such file"})
            data = text.encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/yaml")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self._reply(handler, 401, status_object(401, "Unauthorized", "Unauthorized"))
        parts = [p for p in url.path.split("/") if p]
        if method == "GET" and self._discovery(handler, parts):
            return
        route = self._route(parts)
        if route is None:
            return self._reply(handler, 404, status_object(404, "NotFound", "the server could not find the requested resource"))
        group, version, plural, namespace, name, subresource = route
        if group in self.unserved or (group, version, plural) not in RESOURCES:
            return self._reply(handler, 404, status_object(404, "NotFound", "the server could not find the requested resource"))
        kind, namespaced = RESOURCES[(group, version, plural)]
        verb = {"GET": "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list"),
                "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
        rbac_plural = plural + (f"/{subresource}" if subresource else "")
        delay = self.delays.get((verb, rbac_plural))
        if delay:
            time.sleep(delay)
        not_granted = self.rbac is not None and (group, rbac_plural, verb) not in self.rbac
        if not_granted:
            self.denied.append((verb, group, rbac_plural))
        if not_granted or (verb, rbac_plural) in self.forbidden or (verb, rbac_plural, group) in self.forbidden:
            where = f' in the namespace "{namespace}"' if namespace else ""
            what = f'{plural}.{group} "{name}"' if group and name else (f'{plural} "{name}"' if name else plural)
            message = (f'{what} is forbidden: User "system:serviceaccount:default:vmpod" cannot {verb} '
                       f'resource "{rbac_plural}" in API group "{group}"{where}')
            return self._reply(handler, 403, status_object(403, "Forbidden", message, {"name": name or "", "group": group, "kind": plural}))
        plural_key = "events" if plural == "events" else plural
        if verb == "get":
            obj = self.get(plural_key, name, namespace)
            if obj is None:
                qualified = f"{plural}.{group}" if group else plural
                return self._reply(handler, 404, status_object(404, "NotFound", f'{qualified} "{name}" not found',
                                                               {"name": name, "group": group, "kind": plural}))
            if "as=Table" in handler.headers.get("Accept", ""):
                return self._reply(handler, 200, self._table(plural, [obj], obj["metadata"]["resourceVersion"],
                                                             self.printer_columns.get(plural)))
            return self._reply(handler, 200, self._shown(group, obj))
        if verb == "list":
            return self._list(handler, group, version, plural, kind, namespace, query)
        if verb == "watch":
            return self._watch(handler, group, plural, namespace, query)
        if verb == "create":
            obj = json.loads(body)
            meta = obj.setdefault("metadata", {})
            if "name" not in meta:
                meta["name"] = meta.get("generateName", "obj-") + format(next(self.version), "x")
            meta["namespace"] = namespace
            obj.setdefault("apiVersion", f"{group}/{version}" if group else version)
            obj.setdefault("kind", kind)
            return self._reply(handler, 201, self.put(obj))
        if verb == "patch":
            if self.get(plural_key, name, namespace) is None:
                return self._reply(handler, 404, status_object(404, "NotFound", f'{plural}.{group} "{name}" not found', {"name": name, "group": group, "kind": plural}))
            ctype = handler.headers.get("Content-Type", "")
            if "merge-patch" not in ctype:
                return self._reply(handler, 415, status_object(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}"))
            return self._reply(handler, 200, self.patch(plural_key, name, json.loads(body), namespace, subresource))
        if verb == "delete":
            self.delete(plural_key, name, namespace)
            return self._reply(handler, 200, status_object(200, "", "deleted"))
        return self._reply(handler, 405, status_object(405, "MethodNotAllowed", "not supported here"))

    def _shown(self, group, obj):
        if obj.get("kind") == "Event":
            return core_event(obj) if group == "" else new_event(obj)
        return obj

    @staticmethod
    def _route(parts):
        """/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]] or /apis/G/V/..."""
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return group, version, plural, namespace, name, sub

    def _discovery(self, handler, parts):
        served = {(g, v) for (g, v, _) in RESOURCES if g not in self.unserved}
        if parts == ["api"]:
            self._reply(handler, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        elif parts == ["apis"]:
            groups = sorted({g for g, _ in served if g})
            self._reply(handler, 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for gg, v in served if gg == g],
                 "preferredVersion": next({"groupVersion": f"{g}/{v}", "version": v} for gg, v in served if gg == g)}
                for g in groups]})
        elif parts == ["version"]:
            self._reply(handler, 200, {"major": "1", "minor": "35", "gitVersion": "v1.35.0-fakekube"})
        elif (parts[:1] == ["api"] and len(parts) == 2) or (parts[:1] == ["apis"] and len(parts) == 3):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            if (group, version) not in served:
                return False
            resources = []
            for (g, v, plural), (kind, namespaced) in RESOURCES.items():
                if (g, v) != (group, version):
                    continue
                resources.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
                                  "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"],
                                  "shortNames": SHORT_NAMES.get(plural, [])})
                if plural in WITH_STATUS:
                    resources.append({"name": f"{plural}/status", "singularName": "", "namespaced": namespaced,
                                      "kind": kind, "verbs": ["get", "patch", "update"]})
            self._reply(handler, 200, {"kind": "APIResourceList", "apiVersion": "v1",
                                       "groupVersion": f"{group}/{version}" if group else version, "resources": resources})
        else:
            return False
        return True

    def _selected(self, plural, namespace, query):
        selectors = [s.split("=", 1) for s in query.get("fieldSelector", "").split(",") if "=" in s]
        with self.lock:
            found = []
            for (p, ns, _), obj in sorted(self.objects.items(), key=lambda item: str(item[0])):
                if p != plural or (namespace and ns != namespace):
                    continue
                if all(self._field(obj, path) == value for path, value in selectors):
                    found.append(copy.deepcopy(obj))
            return found

    @staticmethod
    def _field(obj, path):
        if obj.get("kind") == "Event" and path.startswith("involvedObject."):
            obj = core_event(obj)
        value = obj
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return str(value)

    def _list(self, handler, group, version, plural, kind, namespace, query):
        items = [self._shown(group, o) for o in self._selected(plural, namespace, query)]
        rv = str(next(self.version))
        if "as=Table" in handler.headers.get("Accept", ""):
            return self._reply(handler, 200, self._table(plural, items, rv, self.printer_columns.get(plural)))
        self._reply(handler, 200, {"kind": f"{kind}List", "apiVersion": f"{group}/{version}" if group else version,
                                   "metadata": {"resourceVersion": rv}, "items": items})

    @staticmethod
    def _table(plural, items, rv, printer_columns=None):
        """A meta.k8s.io Table: Name, then the CRD's printer columns (else Age)."""
        printer_columns = printer_columns or [("Age", "date", ".metadata.creationTimestamp")]
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        columns += [{"name": n, "type": t, "format": "", "description": "", "priority": 0} for n, t, _ in printer_columns]
        rows = []
        for obj in items:
            cells = [obj["metadata"]["name"]]
            for _, kind, path in printer_columns:
                value = json_path(obj, path)
                if kind == "date" and value:
                    created = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
                    value = f"{max(0, int((now() - created).total_seconds()))}s"
                cells.append("" if value is None else value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": obj["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
                "columnDefinitions": columns, "rows": rows}

    def _watch(self, handler, group, plural, namespace, query):
        since = int(query.get("resourceVersion") or 0)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        deadline = time.monotonic() + min(float(query.get("timeoutSeconds") or 1800), self.max_watch_seconds)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event):
            data = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        selectors = [s.split("=", 1) for s in query.get("fieldSelector", "").split(",") if "=" in s]
        try:
            if since and since < self.compacted_below:
                send({"type": "ERROR", "object": status_object(410, "Expired", f"too old resource version: {since} ({self.compacted_below})")})
                return
            last_bookmark = time.monotonic()
            while time.monotonic() < deadline:
                with self.lock:
                    fresh = [(rv, kind, obj) for rv, kind, p, obj in self.history
                             if rv > since and p == plural and (not namespace or obj["metadata"].get("namespace") == namespace)]
                    if not fresh:
                        self.lock.wait(timeout=0.2)
                for rv, kind, obj in fresh:
                    since = rv
                    if all(self._field(obj, path) == value for path, value in selectors):
                        send({"type": kind, "object": self._shown(group, obj)})
                if bookmarks and time.monotonic() - last_bookmark > self.bookmark_interval:
                    last_bookmark = time.monotonic()
                    send({"type": "BOOKMARK", "object": {"kind": "VirtualMachine", "apiVersion": "kubevirt.io/v1",
                                                         "metadata": {"resourceVersion": str(max(since, 1))}}})
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            except OSError:
                pass
