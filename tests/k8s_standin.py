"""A small, stateful stand-in for the Kubernetes API, enough for KubeSpawner.

It serves, over plain HTTP on 127.0.0.1 (a random port, in a thread):

* ``/api/v1/namespaces/{ns}/pods``: list (label/field selectors), ``?watch=true``
  streams (from a resourceVersion, ending after ``timeoutSeconds`` as the
  real API server does), create, and ``/pods/{name}`` get and delete;
* ``/api/v1/namespaces/{ns}/events``: list and watch;
* everything else: a 404 ``Status`` (recorded, so a test can see it was asked).

Pods move as a cluster with HAMi would move them: created ``Pending``; then
HAMi's extender events (for pods of ``hami-scheduler``), ``Scheduled``,
the kubelet's events and ``Running`` with ``podIP`` 127.0.0.1 and a ready
container.  :meth:`KubeStandIn.refuse_scheduling` makes new pods stay
``Pending`` with a ``FailedScheduling`` event instead.  Created pods are
checked against the Kubernetes 1.30 OpenAPI schema (strict: an unknown field
is an error, answered 422 as an API server answers an invalid object).

The "pod IP" is 127.0.0.1, where :attr:`KubeStandIn.notebook_port` answers
``/user/<name>/api`` as a single-user server would: JupyterHub's readiness
check after ``start()`` is an HTTP request there.  Configure the spawner's
``port`` to that port so the pod's ``notebook-port`` is where the answer is.

Every API request is recorded in :attr:`KubeStandIn.requests`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import kubernetes_validate
from tornado import httpserver, netutil, web

K8S_VERSION = "1.30"
NODE = "gpu-node-1"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None


@dataclass
class _Kind:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    watchers: list[asyncio.Queue] = field(default_factory=list)


def _lookup(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def _selected(obj: dict[str, Any], labels: str, fields: str) -> bool:
    for term in filter(None, labels.split(",")):
        key, _, value = term.partition("=")
        if (obj["metadata"].get("labels") or {}).get(key) != value:
            return False
    for term in filter(None, fields.split(",")):
        key, _, value = term.partition("=")
        if str(_lookup(obj, key)) != value:
            return False
    return True


class KubeStandIn:
    """Start with :meth:`start`, stop with :meth:`stop`; see the module docstring."""

    def __init__(self, schedule_delay: float = 0.1, validate: bool = True) -> None:
        self.schedule_delay = schedule_delay
        self.validate = validate
        self.requests: list[Request] = []
        self.health_checks: list[str] = []
        self.invalid: list[str] = []
        self._refusal: tuple[str, str, str] | None = None
        self._kinds = {"pods": _Kind(), "events": _Kind()}
        self._rv = itertools.count(1)
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = self.notebook_port = 0

    # ---- controls for tests (any thread) ---------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse_scheduling(self, message: str, reason: str = "FailedScheduling",
                          component: str = "hami-scheduler") -> None:
        """New pods stay Pending, with a Warning event of this reason and text."""
        self._refusal = (reason, message, component)

    def allow_scheduling(self) -> None:
        self._refusal = None

    def calls(self, method: str, pattern: str) -> list[Request]:
        """Recorded requests of a method whose path matches a regular expression."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def pods(self) -> dict[str, dict[str, Any]]:
        """Current pods by name (copies)."""
        return self._call(lambda: {k[1]: copy.deepcopy(v) for k, v in
                                   self._kinds["pods"].objects.items()})

    def events(self) -> list[dict[str, Any]]:
        return self._call(lambda: [copy.deepcopy(v) for v in
                                   self._kinds["events"].objects.values()])

    def _call(self, func: Callable[[], Any]) -> Any:
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(self._async(func), self.loop)
        return future.result(10)

    @staticmethod
    async def _async(func: Callable[[], Any]) -> Any:
        return func()

    # ---- life cycle -----------------------------------------------------------------
    def start(self) -> KubeStandIn:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="k8s-standin")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Kubernetes stand-in did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        api = web.Application([
            (r"/api/v1/namespaces/([^/]+)/(pods|events)", _Collection, {"standin": self}),
            (r"/api/v1/namespaces/([^/]+)/(pods|events)/([^/]+)", _Item, {"standin": self}),
            (r".*", _NotFound, {"standin": self}),
        ])
        notebook = web.Application([(r"/user/([^/]+)/.*", _Notebook, {"standin": self}),
                                    (r".*", _NotFound, {"standin": None})])
        for app, attr in ((api, "port"), (notebook, "notebook_port")):
            sockets = netutil.bind_sockets(0, "127.0.0.1")
            server = httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            setattr(self, attr, sockets[0].getsockname()[1])
        ready.set()
        self.loop.run_forever()

    # ---- state (loop thread only) ----------------------------------------------------
    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def resource_version(self) -> str:
        return str(next(self._rv))

    def emit(self, kind: str, change: str, obj: dict[str, Any]) -> None:
        """Store a change of an object and send it to the watchers of its kind."""
        store = self._kinds[kind]
        meta = obj["metadata"]
        meta["resourceVersion"] = self.resource_version()
        key = (meta["namespace"], meta["name"])
        if change == "DELETED":
            store.objects.pop(key, None)
        else:
            store.objects[key] = obj
        entry = (int(meta["resourceVersion"]), change, copy.deepcopy(obj))
        store.history.append(entry)
        for queue in list(store.watchers):
            queue.put_nowait(entry)

    def event(self, pod: dict[str, Any], reason: str, message: str, type_: str = "Normal",
              component: str = "default-scheduler") -> None:
        meta = pod["metadata"]
        self.emit("events", "ADDED", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                         "namespace": meta["namespace"], "uid": str(uuid.uuid4()),
                         "creationTimestamp": _now()},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": component}, "reportingComponent": component,
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1, "eventTime": None})

    def create_pod(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.validate:
            try:
                kubernetes_validate.validate(body, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                self.invalid.append(str(exc))
                return 422, _status(422, "Invalid", f"Pod is invalid: {exc}")
        name = body.get("metadata", {}).get("name", "")
        if (namespace, name) in self._kinds["pods"].objects:
            return 409, _status(409, "AlreadyExists", f'pods "{name}" already exists')
        pod = copy.deepcopy(body)
        pod["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                               creationTimestamp=_now())
        pod["status"] = {"phase": "Pending", "conditions": []}
        self.emit("pods", "ADDED", pod)
        assert self.loop is not None
        self.loop.call_later(self.schedule_delay, self._schedule, namespace, name,
                             pod["metadata"]["uid"])
        return 201, copy.deepcopy(pod)

    def _schedule(self, namespace: str, name: str, uid: str) -> None:
        pod = self._kinds["pods"].objects.get((namespace, name))
        if pod is None or pod["metadata"]["uid"] != uid:
            return  # deleted meanwhile
        pod = copy.deepcopy(pod)
        scheduler = pod["spec"].get("schedulerName") or "default-scheduler"
        if self._refusal is not None:
            reason, message, component = self._refusal
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False",
                                            "reason": "Unschedulable", "message": message}]
            self.emit("pods", "MODIFIED", pod)
            self.event(pod, reason, message, "Warning", component)
            return
        if scheduler == "hami-scheduler":
            self.event(pod, "FilteringSucceed",
                       f"find fit node({NODE}), 0 nodes not fit, 1 nodes fit({NODE}:0.50)",
                       component=scheduler)
            self.event(pod, "BindingSucceed",
                       f"Successfully binding node [{NODE}] to {namespace}/{name}",
                       component=scheduler)
        self.event(pod, "Scheduled", f"Successfully assigned {namespace}/{name} to {NODE}",
                   component=scheduler)
        container = pod["spec"]["containers"][0]
        self.event(pod, "Pulled", f'Container image "{container.get("image")}" already '
                                  f'present on machine', component="kubelet")
        self.event(pod, "Created", f"Created container {container['name']}", component="kubelet")
        self.event(pod, "Started", f"Started container {container['name']}", component="kubelet")
        pod["spec"]["nodeName"] = NODE
        pod["status"] = {
            "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
            "startTime": _now(),
            "conditions": [{"type": t, "status": "True"} for t in
                           ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [
                {"name": c["name"], "ready": True, "restartCount": 0, "image": c.get("image"),
                 "imageID": "", "started": True, "state": {"running": {"startedAt": _now()}}}
                for c in pod["spec"]["containers"]]}
        self.emit("pods", "MODIFIED", pod)

    def delete_pod(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        pod = self._kinds["pods"].objects.get((namespace, name))
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found')
        pod = copy.deepcopy(pod)
        pod["metadata"]["deletionTimestamp"] = _now()
        self.event(pod, "Killing", f"Stopping container {pod['spec']['containers'][0]['name']}",
                   component="kubelet")
        self.emit("pods", "DELETED", pod)
        return 200, pod


class _Base(web.RequestHandler):
    def initialize(self, standin: KubeStandIn | None) -> None:
        self.standin = standin

    def check_xsrf_cookie(self) -> None:
        pass

    def prepare(self) -> None:
        if self.standin is None:
            return
        body = None
        if self.request.body:
            try:
                body = json.loads(self.request.body)
            except ValueError:
                body = self.request.body.decode(errors="replace")
        query = {k: v[-1] for k, v in parse_qs(urlparse(self.request.uri).query).items()}
        self.standin.record(Request(self.request.method, self.request.path, query, body))

    def reply(self, code: int, obj: dict[str, Any]) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class _NotFound(_Base):
    def _any(self, *args: str) -> None:
        self.reply(404, _status(404, "NotFound", f"the server could not find the requested "
                                                 f"resource ({self.request.path})"))

    get = post = put = patch = delete = _any


class _Collection(_Base):
    async def get(self, namespace: str, kind: str) -> None:
        standin = self.standin
        labels = self.get_query_argument("labelSelector", "")
        fields = self.get_query_argument("fieldSelector", "")
        if self.get_query_argument("watch", "").lower() in ("true", "1"):
            await self._watch(namespace, kind, labels, fields)
            return
        items = [copy.deepcopy(o) for (ns, _), o in standin._kinds[kind].objects.items()
                 if ns == namespace and _selected(o, labels, fields)]
        list_kind = "PodList" if kind == "pods" else "EventList"
        self.reply(200, {"kind": list_kind, "apiVersion": "v1", "items": items,
                         "metadata": {"resourceVersion": standin.resource_version()}})

    async def _watch(self, namespace: str, kind: str, labels: str, fields: str) -> None:
        store = self.standin._kinds[kind]
        since = int(self.get_query_argument("resourceVersion", "0") or 0)
        deadline = time.monotonic() + float(self.get_query_argument("timeoutSeconds", "30"))
        queue: asyncio.Queue = asyncio.Queue()
        for entry in store.history:
            if entry[0] > since:
                queue.put_nowait(entry)
        store.watchers.append(queue)
        self.set_header("Content-Type", "application/json")
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    _, change, obj = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if obj["metadata"]["namespace"] == namespace and _selected(obj, labels, fields):
                    self.write(json.dumps({"type": change, "object": obj}) + "\n")
                    await self.flush()
        except Exception:  # the client went away
            return
        finally:
            store.watchers.remove(queue)
        self.finish()

    def post(self, namespace: str, kind: str) -> None:
        body = json.loads(self.request.body or b"{}")
        if kind != "pods":
            self.reply(405, _status(405, "MethodNotAllowed", "only pods are created here"))
            return
        self.reply(*self.standin.create_pod(namespace, body))


class _Item(_Base):
    def get(self, namespace: str, kind: str, name: str) -> None:
        obj = self.standin._kinds[kind].objects.get((namespace, name))
        if obj is None:
            self.reply(404, _status(404, "NotFound", f'{kind} "{name}" not found'))
        else:
            self.reply(200, copy.deepcopy(obj))

    def delete(self, namespace: str, kind: str, name: str) -> None:
        if kind != "pods":
            self.reply(405, _status(405, "MethodNotAllowed", "only pods are deleted here"))
            return
        self.reply(*self.standin.delete_pod(namespace, name))


class _Notebook(web.RequestHandler):
    """What a single-user server in the pod answers at /user/<name>/api."""

    def initialize(self, standin: KubeStandIn) -> None:
        self.standin = standin

    def get(self, user: str) -> None:
        import jupyterhub
        self.standin.health_checks.append(self.request.path)
        self.set_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.finish({"version": "2.0.0"})
