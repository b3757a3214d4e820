"""RayExecutor: instances run on the nodes of a Ray cluster (the ``[ray]`` extra).

Each instance is one Ray task, ``max_retries=0`` (retries are the scheduler's: it tells an
infrastructure failure from the command's), that asks for one slot: a bundle of
``cpus_per_slot`` CPUs. Ray picks the node. There the task runs the same runner as the local
workers (:func:`qcompute.server.runner.run_instance`), in the same sandbox, which each Ray worker
process starts once and keeps. The task is a streaming generator: it yields :class:`Placed`
(the node), then the runner's events, Finished last, in batches (Placed with the runner's
first events, if they come within 0.2 s; then whatever is queued at each yield). One asyncio
loop here (a thread) follows every instance's stream, each a coroutine awaiting its next batch
(no polling, and no thread to start per instance).

Hardware constraints: each live node is a node kind (cores and memory from Ray, CPU model, SSD
and labels from what ``qcompute node join`` labelled it with). A ``SpecificHardwareConstraint``
naming a node label ``key=value`` becomes a Ray label selector, one naming a custom resource
asks for a sliver of it; the other constraints pin the instance to the nodes that meet them
(``ray.io/node-id`` selector), unless every node does.

Controls reach a running instance through a mailbox actor on this node (an async actor), in
one box per Ray worker process: a listener thread that the worker starts once (per executor)
and keeps waits on it, and hands each message to the instance it names. The task's first event
names its worker's box; a message sent before it is held here until then. An instance that gets
no control message thus costs the mailbox nothing. The messages: cancel (the runner's own path:
SIGTERM to the command's group, SIGKILL after ``kill_grace_seconds``), snapshot, periodic
snapshot, refresh. An instance
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
import uuid
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
_FIRST_EVENTS_WAIT_SECONDS = 0.2  # Placed waits this long for the runner's first events
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
    """Control messages for running instances (an async actor): one queue per Ray worker
    process, whose listener takes ``(instance, message)`` pairs from it one by one."""

    def __init__(self) -> None:
        self._boxes: dict[str, asyncio.Queue] = {}

    def _box(self, worker: str) -> asyncio.Queue:
        return self._boxes.setdefault(worker, asyncio.Queue())

    async def post(self, worker: str, instance: str, message: dict) -> None:
        self._box(worker).put_nowait((instance, message))

    async def take(self, worker: str) -> tuple[str, dict]:
        return await self._box(worker).get()


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


@dataclass(frozen=True)
class _Started:
    """The task's first event: Placed, and the mailbox box of the Ray worker running it."""

    placed: Placed
    box: str


class _Listener:
    """A Ray worker process's end of one executor's mailbox: one thread, started with the
    first instance the worker runs for that executor and kept, hands the control messages of
    its box to the instance they name (the one running, or none: then they are dropped).
    An instance thus costs the mailbox no call, unless it is sent a control message."""

    _all: dict[str, "_Listener"] = {}  # by executor (its mailbox)
    _all_lock = threading.Lock()

    def __init__(self, mailbox, executor: str) -> None:
        self.mailbox, self.executor = mailbox, executor
        self.box = ray.get_runtime_context().get_worker_id()
        self.running: dict[str, tuple[threading.Event, Any]] = {}  # instance: (cancel, control)
        threading.Thread(target=self._listen, daemon=True, name="qcompute-controls").start()

    @classmethod
    def of(cls, mailbox, executor: str) -> "_Listener":
        with cls._all_lock:
            if executor not in cls._all:
                cls._all[executor] = cls(mailbox, executor)
            return cls._all[executor]

    def _listen(self) -> None:
        while True:
            try:
                instance, message = ray.get(self.mailbox.take.remote(self.box))
            except Exception:  # the mailbox is gone: its executor shut down
                with self._all_lock:
                    self._all.pop(self.executor, None)
                return
            target = self.running.get(instance)
            if target is None:
                continue  # it ended meanwhile
            cancel, control = target
            if message.get("control") == "cancel":
                cancel.set()
                continue
            try:
                control.apply(message)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("bad control message %r: %s", message, exc)


def _run_on_node(spec_json: str, sandbox_json: str, mailbox,
                 executor: str) -> Iterator[list[Any]]:
    """The Ray task: _Started (Placed), then the runner's events, Finished last, in batches
    (each yield is all the events queued by then: a yield costs more than a list)."""
    from qcompute.server.runner import run_instance
    from qcompute.server.runner_control import InstanceControl
    from qcompute.server.runner_telemetry import InstanceCgroup
    from qcompute.server.sandbox import SandboxError

    taken_at = time.time()
    node_id, hostname = ray.get_runtime_context().get_node_id(), socket.gethostname()
    spec = InstanceSpec.from_json(spec_json)
    spec = replace(spec, env={**spec.env, NODE_ENV: f"{hostname}/{node_id}"})
    cancel, control = threading.Event(), InstanceControl()
    listener, name = _Listener.of(mailbox, executor), _instance_name(spec.key)
    listener.running[name] = (cancel, control)  # before the executor can post to it
    try:
        started = _Started(Placed(spec.key, node_id=node_id, hostname=hostname), listener.box)
        try:
            sandbox = _worker_sandbox(sandbox_json)  # in this thread, which outlives it
        except (SandboxError, OSError) as exc:
            yield [started, Finished(spec.key, exit_code=None, error=(
                f"cannot set up the instances' sandbox on {hostname}: {exc}"))]
            return
        if sandbox is not None:
            InstanceCgroup.prepare(sandbox.config.memory_mb, sandbox.config.max_pids)
        events: queue.SimpleQueue = queue.SimpleQueue()

        def run() -> None:
            try:
                run_instance(spec, events.put, cancel, control, sandbox, taken_at)
            except BaseException as exc:  # never leave the stream without its Finished
                events.put(Finished(spec.key, exit_code=None, error=f"runner failure: {exc!r}"))

        threading.Thread(target=run, daemon=True, name="qcompute-runner").start()
        batch: list[Any] = [started]  # Placed goes with the runner's first events
        wait: Optional[float] = _FIRST_EVENTS_WAIT_SECONDS
        while True:
            try:
                batch.append(events.get(timeout=wait))
            except queue.Empty:
                pass
            while not events.empty():
                batch.append(events.get())
            yield batch
            if isinstance(batch[-1], Finished):
                break
            batch, wait = [], None
    finally:
        listener.running.pop(name, None)


def _instance_name(key: InstanceKey) -> str:
    return f"{key.task_uuid}/{key.instance_id}/{key.attempt}"


# -- the server side --------------------------------------------------------------------------

class _Run:
    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.stream: Any = None  # the ObjectRefGenerator
        self.node_id: Optional[str] = None
        self.box: Optional[str] = None  # its Ray worker's mailbox box, once it started
        self.unsent: list[dict[str, Any]] = []  # control messages sent before that
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
        self._mailbox_id = uuid.uuid4().hex  # names it in the workers (_Listener.of)
        self._task = ray.remote(_run_on_node)
        self._options = {"num_returns": "streaming", "max_retries": 0, "num_cpus": cpus_per_slot}
        self._stop = threading.Event()
        threading.Thread(target=self._watch_nodes, daemon=True, name="ray-nodes").start()
        self._streams = asyncio.new_event_loop()  # follows every instance's stream
        threading.Thread(target=self._streams.run_forever, daemon=True,
                         name="ray-streams").start()

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
            run.stream = self._task.options(**options).remote(
                spec.to_json(), self._sandbox_json, self._mailbox, self._mailbox_id)
        except Exception:
            with self._lock:
                self._runs.pop(spec.key, None)
            raise
        asyncio.run_coroutine_threadsafe(self._follow(run), self._streams)

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
        self._post(run, {"control": "cancel"})

    def _control(self, key: InstanceKey, message: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.cancel_requested:
                raise KeyError(f"instance {key} is not running here")
        self._post(run, message)

    def _post(self, run: _Run, message: dict[str, Any]) -> None:
        """Send a control message to the worker running ``run`` (once it started)."""
        message = json.loads(json.dumps(message))
        with self._lock:
            if run.box is None:
                run.unsent.append(message)
                return
        self._mailbox.post.remote(run.box, _instance_name(run.spec.key), message)

    def _started(self, run: _Run, started: _Started) -> None:
        with self._lock:
            run.node_id, run.box = started.placed.node_id, started.box
            unsent, run.unsent = run.unsent, []
        for message in unsent:
            self._mailbox.post.remote(run.box, _instance_name(run.spec.key), message)

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

    async def _follow(self, run: _Run) -> None:
        """One instance's stream, until its Finished (or the error that replaces it)."""
        key, end = run.spec.key, None
        try:
            async for ref in run.stream:
                for event in await ref:
                    if isinstance(event, _Started):
                        self._started(run, event)
                        event = event.placed
                    if isinstance(event, Finished):
                        end = event
                        break
                    if not run.ended:
                        self._deliver(event)
                if end is not None:
                    break
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
        self._streams.call_soon_threadsafe(self._streams.stop)
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
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
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
