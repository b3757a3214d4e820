"""RayExecutor: instances run on the nodes of a Ray cluster (the ``[ray]`` extra).

Each instance is one Ray task, ``max_retries=0`` (retries are the scheduler's: it tells an
infrastructure failure from the command's), that asks for one slot: a bundle of
``cpus_per_slot`` CPUs. Ray picks the node. There the task runs the same runner as the local
workers (:func:`qcompute.server.runner.run_instance`), in the same sandbox, which each Ray worker
process starts once and keeps. The task is a streaming generator: it yields :class:`Placed`
(the node), then the runner's events, Finished last; one thread here follows each instance's
stream, blocked on the next event (no polling).

Hardware constraints: each live node is a node kind (cores and memory from Ray, CPU model, SSD
and labels from what ``qcompute node join`` labelled it with). A ``SpecificHardwareConstraint``
naming a node label ``key=value`` becomes a Ray label selector, one naming a custom resource
asks for a sliver of it; the other constraints pin the instance to the nodes that meet them
(``ray.io/node-id`` selector), unless every node does.

Controls reach a running instance through a mailbox actor on this node (an async actor: the
task's listener thread waits on it): cancel (the runner's own path: SIGTERM to the command's
group, SIGKILL after ``kill_grace_seconds``), snapshot, periodic snapshot, refresh. An instance
not finished ``kill_grace_seconds + 5`` s after its cancel gets ``ray.cancel(force=True)``. A
node or worker that dies ends its instances with an infrastructure failure (``error`` set): the
scheduler re-queues them within ``max_infra_retries`` and Ray places them again. A node cut off
from the network is declared dead by Ray's health checks, but the streams of the instances it
ran do not end (their calls to it just hang): a watcher reads the node list every couple of
seconds and ends the instances of a node Ray lists as dead itself.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qcompute.server.hardware import NodeCapabilities, detect, slugify_cpu_model
from qcompute.server.sandbox import SandboxConfig

from .base import (ControlMessages, Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                   Placed)

__all__ = ["RayExecutor", "NODE_ENV", "node_labels", "start_ray", "use_token"]

log = logging.getLogger(__name__)

NODE_ENV = "QCOMPUTE_NODE"  # in each instance's environment: "<hostname>/<Ray node id>"
LABEL_PREFIX = "qcompute-"  # labels `qcompute node join` sets: qcompute-cpu, -ssd, -clock
STANDARD_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
_BACKSTOP_EXTRA_SECONDS = 5.0
_NODES_TTL_SECONDS = 2.0  # the cluster's node list is read again after this long
_RESOURCE_SLIVER = 0.001  # what an instance asks of a custom resource a constraint names


def node_labels(capabilities: NodeCapabilities) -> dict[str, str]:
    """The Ray labels ``qcompute node join`` gives a node: what Ray does not see of it."""
    labels = {f"{LABEL_PREFIX}cpu": slugify_cpu_model(capabilities.cpu_model)[:63],
              f"{LABEL_PREFIX}ssd": str(capabilities.ssd).lower()}
    if capabilities.clock_ghz:
        labels[f"{LABEL_PREFIX}clock"] = str(capabilities.clock_ghz)
    return labels


@dataclass(frozen=True)
class _Node:
    """One live Ray node, as qcompute sees it."""

    id: str
    hostname: str
    address: str
    capabilities: NodeCapabilities
    labels: dict[str, str]  # the user's labels (not Ray's nor qcompute's own)
    resources: dict[str, float]  # custom resources
    slots: int

    def to_json(self, busy: int) -> dict[str, Any]:
        return {"id": self.id, "hostname": self.hostname, "address": self.address,
                "cores": self.capabilities.cores, "memoryMB": self.capabilities.memory_mb,
                "cpuModel": self.capabilities.cpu_model, "gpu": self.capabilities.gpu,
                "labels": self.labels, "resources": self.resources, "slots": self.slots,
                "freeSlots": max(0, self.slots - busy)}


def _read_node(info: dict[str, Any], cpus_per_slot: float) -> _Node:
    resources = info.get("Resources") or {}
    labels = dict(info.get("Labels") or {})
    own = {k[len(LABEL_PREFIX):]: labels.pop(k) for k in list(labels) if k.startswith(LABEL_PREFIX)}
    labels = {k: v for k, v in labels.items() if not k.startswith("ray.io/")}
    custom = {k: v for k, v in resources.items()
              if k not in STANDARD_RESOURCES and not k.startswith(("node:", "accelerator_type:",
                                                                   "bundle_group"))}
    cores = int(resources.get("CPU", 0))
    capabilities = NodeCapabilities(
        cores=max(1, cores), memory_mb=max(1, int(resources.get("memory", 0) // 2**20)),
        cpu_model=own.get("cpu", "unknown"), gpu=resources.get("GPU", 0) > 0,
        clock_ghz=float(own["clock"]) if own.get("clock") else None,
        ssd=own.get("ssd") == "true",
        labels=[f"{k}={v}" for k, v in labels.items()] + sorted(custom))
    return _Node(id=info["NodeID"], hostname=info.get("NodeManagerHostname", ""),
                 address=info.get("NodeManagerAddress", ""), capabilities=capabilities,
                 labels=labels, resources=custom,
                 slots=int(math.floor(resources.get("CPU", 0) / cpus_per_slot + 1e-9)))


# -- the node side ----------------------------------------------------------------------------

class _Mailbox:
    """Control messages for running instances, one queue per instance (an async actor)."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue] = {}

    def _box(self, key: str) -> asyncio.Queue:
        return self._boxes.setdefault(key, asyncio.Queue())

    async def post(self, key: str, message: Optional[dict]) -> None:
        self._box(key).put_nowait(message)

    async def take(self, key: str) -> Optional[dict]:
        return await self._box(key).get()

    async def forget(self, key: str) -> None:
        self._boxes.pop(key, None)


_SANDBOXES: dict[str, Any] = {}  # a Ray worker process's sandbox, started once


def _worker_sandbox(config_json: str):
    from qcompute.server.sandbox import Sandbox

    config = SandboxConfig.from_json(config_json)
    if not config.enabled:
        return None
    if config_json not in _SANDBOXES:
        _SANDBOXES[config_json] = Sandbox(config).start()
        atexit.register(_SANDBOXES[config_json].close)
    return _SANDBOXES[config_json]


def _listen(mailbox, box: str, cancel: threading.Event, control) -> None:
    """The instance's listener: control messages from the mailbox, until None."""
    while (message := ray.get(mailbox.take.remote(box))) is not None:
        if message.get("control") == "cancel":
            cancel.set()
            continue
        try:
            control.apply(message)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("bad control message %r: %s", message, exc)


def _run_on_node(spec_json: str, sandbox_json: str, mailbox) -> Iterator[ExecutorEvent]:
    """The Ray task: Placed, then the runner's events, Finished last."""
    from qcompute.server.runner import run_instance
    from qcompute.server.runner_control import InstanceControl
    from qcompute.server.runner_telemetry import InstanceCgroup
    from qcompute.server.sandbox import SandboxError

    taken_at = time.time()
    node_id, hostname = ray.get_runtime_context().get_node_id(), socket.gethostname()
    spec = InstanceSpec.from_json(spec_json)
    spec = replace(spec, env={**spec.env, NODE_ENV: f"{hostname}/{node_id}"})
    yield Placed(spec.key, node_id=node_id, hostname=hostname)
    try:
        sandbox = _worker_sandbox(sandbox_json)
    except (SandboxError, OSError) as exc:
        yield Finished(spec.key, exit_code=None,
                       error=f"cannot set up the instances' sandbox on {hostname}: {exc}")
        return
    if sandbox is not None:
        InstanceCgroup.prepare(sandbox.config.memory_mb, sandbox.config.max_pids)
    events: queue.SimpleQueue = queue.SimpleQueue()
    cancel, control = threading.Event(), InstanceControl()
    box = _box_name(spec.key)
    listener = threading.Thread(target=_listen, args=(mailbox, box, cancel, control),
                                daemon=True, name="qcompute-controls")
    listener.start()

    def run() -> None:
        try:
            run_instance(spec, events.put, cancel, control, sandbox, taken_at)
        except BaseException as exc:  # never leave the stream without its Finished
            events.put(Finished(spec.key, exit_code=None, error=f"runner failure: {exc!r}"))
        finally:
            mailbox.post.remote(box, None)  # ends the listener

    threading.Thread(target=run, daemon=True, name="qcompute-runner").start()
    while True:
        event = events.get()
        yield event
        if isinstance(event, Finished):
            break
    listener.join(5.0)


def _box_name(key: InstanceKey) -> str:
    return f"{key.task_uuid}/{key.instance_id}/{key.attempt}"


# -- the server side --------------------------------------------------------------------------

class _Run:
    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.stream: Any = None  # the ObjectRefGenerator
        self.node_id: Optional[str] = None
        self.cancel_requested = False
        self.backstop: Optional[threading.Timer] = None
        self.ended = False  # its Finished is delivered: later events of its stream are dropped


class RayExecutor(ControlMessages, Executor):
    """Runs instances as Ray tasks on the cluster this process is connected to (``ray.init``
    is the caller's), each in ``sandbox`` (none by default), one slot of ``cpus_per_slot``
    CPUs each."""

    def __init__(self, on_event: Callable[[ExecutorEvent], None], *, cpus_per_slot: float = 1.0,
                 sandbox: Optional[SandboxConfig] = None, isolation: Optional[str] = None) -> None:
        super().__init__(on_event)
        if not ray.is_initialized():
            raise RuntimeError("RayExecutor needs a Ray connection: call ray.init first")
        self._cpus = cpus_per_slot
        self.sandboxed = bool(sandbox and sandbox.enabled)
        self.isolation = (isolation or ("bubblewrap sandbox" if self.sandboxed
                                        else "unsandboxed")) + " on Ray nodes"
        self._sandbox_json = (sandbox or SandboxConfig()).to_json()
        self._lock = threading.Lock()
        self._runs: dict[InstanceKey, _Run] = {}
        self._accepting = True
        self._nodes: list[_Node] = []
        self._nodes_read = -math.inf
        here = ray.get_runtime_context().get_node_id()
        self._mailbox = ray.remote(_Mailbox).options(
            num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                here, soft=False)).remote()
        self._task = ray.remote(_run_on_node)
        self._options = {"num_returns": "streaming", "max_retries": 0, "num_cpus": cpus_per_slot}
        self._stop = threading.Event()
        threading.Thread(target=self._watch_nodes, daemon=True, name="ray-nodes").start()

    # -- nodes ----------------------------------------------------------------------------------

    def nodes(self) -> list[_Node]:
        """The live nodes (read again every couple of seconds)."""
        with self._lock:
            if time.monotonic() - self._nodes_read < _NODES_TTL_SECONDS:
                return self._nodes
        self._read_nodes()
        return self._nodes

    def _read_nodes(self) -> set[str]:
        """Read the node list again; returns the ids of the nodes Ray lists as dead."""
        try:
            listed = ray.nodes()
            found = [_read_node(n, self._cpus) for n in listed if n.get("Alive")]
        except Exception as exc:  # the GCS is unreachable: keep what we knew
            log.warning("cannot list the Ray nodes: %s", exc)
            return set()
        with self._lock:
            self._nodes, self._nodes_read = found, time.monotonic()
        return {n["NodeID"] for n in listed if not n.get("Alive")}

    def _watch_nodes(self) -> None:
        """End the instances of the nodes Ray declared dead (their streams may never end)."""
        while not self._stop.wait(_NODES_TTL_SECONDS):
            with self._lock:
                placed = [run for run in self._runs.values() if run.node_id]
            if not placed:
                continue
            dead = self._read_nodes()
            for run in placed:
                if run.node_id in dead:
                    self._end(run, Finished(run.spec.key, exit_code=None,
                                            cancelled=run.cancel_requested, error=(
                        f"the Ray task ended on node {run.node_id}: Ray declared the node dead "
                        "(it stopped answering its health checks)")))
                    try:
                        ray.cancel(run.stream, force=True)
                    except Exception:
                        pass

    def node_kinds(self) -> list[NodeCapabilities]:
        return [node.capabilities for node in self.nodes()]

    def describe_nodes(self) -> list[dict[str, Any]]:
        """Each live node with its cores, memory, labels and free slots (for status)."""
        with self._lock:
            busy: dict[str, int] = {}
            for run in self._runs.values():
                if run.node_id:
                    busy[run.node_id] = busy.get(run.node_id, 0) + 1
        return [node.to_json(busy.get(node.id, 0)) for node in self.nodes()]

    @property
    def capacity(self) -> int:
        return sum(node.slots for node in self.nodes())

    def problem(self) -> Optional[str]:
        if not self._accepting:
            return "shut down"
        nodes = self.nodes()
        if not nodes:
            return "no Ray node is alive"
        if not any(node.slots for node in nodes):
            return f"no Ray node has {self._cpus:g} CPUs for a slot"
        return None

    def placement(self, constraints: Optional[list[dict[str, Any]]]) -> dict[str, Any]:
        """The Ray options that send an instance with these hardware constraints to a node
        that meets them."""
        from qcompute.server.services.hardware import unmet_constraints

        if not constraints:
            return {}
        selector: dict[str, str] = {}
        resources: dict[str, float] = {}
        rest = []
        nodes = self.nodes()
        custom = {name for node in nodes for name in node.resources}
        for constraint in constraints:
            key = constraint.get("specificationKey") \
                if constraint.get("discriminator") == "SpecificHardwareConstraint" else None
            if isinstance(key, str) and "=" in key:
                name, value = key.split("=", 1)
                selector[name] = value
            elif isinstance(key, str) and key in custom:
                resources[key] = _RESOURCE_SLIVER
            else:
                rest.append(constraint)
        if rest:
            meeting = [n.id for n in nodes if unmet_constraints([n.capabilities], rest) is None]
            if len(meeting) < len(nodes):
                selector["ray.io/node-id"] = f"in({','.join(meeting) or 'none'})"
        options: dict[str, Any] = {}
        if selector:
            options["label_selector"] = selector
        if resources:
            options["resources"] = resources
        return options

    # -- instances ------------------------------------------------------------------------------

    def running(self) -> set[InstanceKey]:
        with self._lock:
            return set(self._runs)

    def submit(self, spec: InstanceSpec) -> None:
        run = _Run(spec)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the executor is shut down")
            if spec.key in self._runs:
                raise ValueError(f"instance {spec.key} is already running")
            self._runs[spec.key] = run
        try:
            options = {**self._options, **self.placement(spec.hardware_constraints)}
            run.stream = self._task.options(**options).remote(spec.to_json(), self._sandbox_json,
                                                              self._mailbox)
        except Exception:
            with self._lock:
                self._runs.pop(spec.key, None)
            raise
        threading.Thread(target=self._follow, args=(run,), daemon=True,
                         name=f"ray-{spec.task_uuid[:8]}-{spec.instance_id}").start()

    def cancel(self, key: InstanceKey) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.cancel_requested:
                return
            run.cancel_requested = True
            run.backstop = threading.Timer(run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS,
                                           self._force_cancel, (run,))
            run.backstop.daemon = True
            run.backstop.start()
        self._post(key, {"control": "cancel"})

    def _control(self, key: InstanceKey, message: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.cancel_requested:
                raise KeyError(f"instance {key} is not running here")
        self._post(key, message)

    def _post(self, key: InstanceKey, message: Optional[dict]) -> None:
        self._mailbox.post.remote(_box_name(key), json.loads(json.dumps(message)))

    def _force_cancel(self, run: _Run) -> None:
        """The backstop: the cancelled instance did not end in time (or never started)."""
        with self._lock:
            if self._runs.get(run.spec.key) is not run:
                return
        log.warning("%s did not stop in time: force-cancelling its Ray task", run.spec.key)
        try:
            ray.cancel(run.stream, force=True)
        except Exception as exc:
            log.warning("ray.cancel of %s failed: %s", run.spec.key, exc)

    def _follow(self, run: _Run) -> None:
        """One instance's stream, until its Finished (or the error that replaces it)."""
        key, end = run.spec.key, None
        try:
            for ref in run.stream:
                event = ray.get(ref)
                if isinstance(event, Placed):
                    with self._lock:
                        run.node_id = event.node_id
                if isinstance(event, Finished):
                    end = event
                    break
                if not run.ended:
                    self._deliver(event)
        except ray.exceptions.TaskCancelledError:
            end = Finished(key, exit_code=None, cancelled=True)
        except Exception as exc:  # the node, its raylet or the worker died: not the command
            where = f" on node {run.node_id}" if run.node_id else ""
            end = Finished(key, exit_code=None, cancelled=run.cancel_requested,
                           error=f"the Ray task ended{where}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}")
        if end is None:
            end = Finished(key, exit_code=None, error="the Ray task ended without reporting")
        self._end(run, end)

    def _end(self, run: _Run, end: Finished) -> None:
        """Deliver the run's Finished, once (its stream, or the node watcher)."""
        with self._lock:
            if run.ended:
                return
            run.ended = True
            if run.backstop is not None:
                run.backstop.cancel()
        try:
            self._deliver(end)
        finally:
            with self._lock:
                if self._runs.get(run.spec.key) is run:
                    del self._runs[run.spec.key]
            try:
                self._mailbox.forget.remote(_box_name(run.spec.key))
            except Exception:
                pass

    def shutdown(self) -> None:
        with self._lock:
            self._accepting = False
            runs = list(self._runs.values())
        for run in runs:
            self.cancel(run.spec.key)
        grace = max((run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS for run in runs),
                    default=0.0)
        deadline = time.monotonic() + grace + 2.0
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._silenced = True
        self._stop.set()
        try:
            ray.kill(self._mailbox)
        except Exception:
            pass


def start_ray(settings) -> None:
    """Connect this process to the settings' Ray cluster, or start a head in it; token
    authentication on, with the token of ``settings.resolved_ray_token_file``."""
    token = settings.resolved_ray_token_file
    if not token.exists():
        if settings.ray_address:
            raise RuntimeError(f"no Ray token at {token}: copy the head's token file there "
                               "(docs/ray.rst)")
        import secrets

        token.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    use_token(token)
    if ray.is_initialized():
        return
    # Joining, this process is a driver on a node of this machine: Ray finds the raylets in the
    # process table (which network namespaces share) and prefers the head's: name ours.
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False,
                 _node_ip_address=settings.resolved_ray_node_ip)
        return
    here = detect(settings.data_dir, settings.node)
    ray.init(num_cpus=settings.max_concurrent_instances * settings.ray_cpus_per_slot,
             include_dashboard=False, log_to_driver=False, labels=node_labels(here),
             _node_ip_address=settings.resolved_ray_node_ip)
    address = ray.get_runtime_context().gcs_address
    (settings.data_dir / "ray-address").write_text(address + "\n")
    log.info("started a Ray head at %s; add nodes with: qcompute node join %s", address, address)


def use_token(path) -> None:
    """Token authentication with the token in ``path``, for this process and its children.
    Ray reads the mode when it is imported: refresh what it cached."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
