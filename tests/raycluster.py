"""A real multi-node Ray cluster on one machine, for fault tests.

Every node is its own ``ray start`` (the head with ``--head``, the others with
``--address``): its own raylet, object store, resources, temp dir and loopback ports,
started in a session of its own and tagged with a marker in its environment, so a node
can be killed alone (its raylet by PID: what a lost machine looks like to Ray) and the
fixture stops exactly the processes it started (never ``ray stop``, which would kill
every Ray of this user on the machine).

    cluster = RayCluster.start(head_cpus=0, workers={"w1": 2, "w2": 2})
    cluster.driver_env(s3.env())       # environment for a job driver (python -m jobs.x)
    cluster.kill_raylet("w2")          # the fault; returns when the GCS marks it dead
    cluster.add_node("w3", 2)          # the replacement an autoscaler would start
    cluster.stop()

Nothing here imports ``ray`` into the test process (a test session may already hold a
private ``ray.init``); the cluster is queried through the dashboard's state API.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

log = logging.getLogger("tests.raycluster")

ROOT = Path(__file__).resolve().parents[1]

MARKER_VAR = "MASKTHEFACE_TEST_RAY_NODE"
#: how fast the GCS declares a lost node dead (Ray's defaults take ~20 s): a killed raylet
#: refuses the check at once, so 5 failures 1 s apart find it in ~5 s; a live raylet that a
#: loaded machine stalls gets 10 s to answer each check (1 s timeouts declared the head
#: node dead under CI load)
HEALTH_ENV = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "10000", "RAY_health_check_failure_threshold": "5"}
STORE_BYTES = 256 * 2**20


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ------------------------------------------------------------------------------ processes

def _session_and_state(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode(errors="replace")
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[3]), rest[0]  # session id, state


def tagged_pids(sid: int, marker: bytes) -> list[int]:
    """Live processes of one node: its session, or anything carrying its marker in the
    environment (workers and job drivers may run in sessions of their own)."""
    me = os.getpid()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        try:
            psid, state = _session_and_state(pid)
            if state in ("Z", "X"):
                continue
            if psid == sid:
                pids.append(pid)
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    pids.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return pids


def kill_tagged(sid: int, marker: bytes, grace: float = 2.0) -> list[int]:
    """Terminate a node's processes, SIGKILL after ``grace``; returns survivors.
    (gcs_server, raylet and the runtime-env agent ignore SIGTERM for 8+ s when their
    peers go down with them; test nodes are disposable, so the grace is short.)"""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = tagged_pids(sid, marker)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = tagged_pids(sid, marker)
        if not pids:
            return []
    return tagged_pids(sid, marker)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


# ------------------------------------------------------------------------------ nodes

@dataclasses.dataclass
class Node:
    """One ``ray start`` of the cluster."""

    name: str
    num_cpus: float
    sid: int              # the session every process of the node belongs to
    marker: bytes
    temp_dir: Path
    head: bool = False
    node_id: str = ""     # Ray's node id, from the state API
    killed: bool = False

    def pids(self) -> list[int]:
        return tagged_pids(self.sid, self.marker)

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            cmd = _cmdline(pid)
            if cmd and os.path.basename(cmd[0]) == "raylet":
                return pid
        return None

    def stop(self) -> list[int]:
        return kill_tagged(self.sid, self.marker)


def _start_node(name: str, args: list[str], env: Mapping[str, str], temp_dir: Path,
                timeout: float = 120.0) -> tuple[int, bytes]:
    marker_value = f"{name}-{uuid.uuid4().hex}"
    marker = f"{MARKER_VAR}={marker_value}".encode()
    node_env = {**env, MARKER_VAR: marker_value}
    log_path = temp_dir / "ray-start.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", *args, f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    with open(log_path, "wb") as out:
        starter = subprocess.Popen(cmd, env=node_env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = starter.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tagged(starter.pid, marker)
        raise TimeoutError(f"ray start ({name}) did not return in {timeout:.0f} s:\n{tail(log_path)}") from None
    if rc != 0:
        kill_tagged(starter.pid, marker)
        raise RuntimeError(f"ray start ({name}) failed ({rc}):\n{tail(log_path)}")
    return starter.pid, marker


class RayCluster:
    """A head and worker nodes on 127.0.0.1; see the module docstring."""

    def __init__(self, env: dict[str, str], token: str, root: Path) -> None:
        self.env = env                # what every node starts with (token, health checks, no AWS_*)
        self.token = token
        self.root = root              # temp dirs of all nodes live under it
        self.nodes: dict[str, Node] = {}
        self.gcs_address = ""
        self.dashboard = ""

    # --------------------------------------------------------------------- start / stop

    @classmethod
    def start(cls, head_cpus: float = 0, workers: Mapping[str, float] | None = None,
              pythonpath: str = "") -> "RayCluster":
        token = secrets.token_hex(32)
        # short: Ray's unix sockets live under the temp dirs (108-byte limit)
        root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp" if os.path.isdir("/tmp") else None))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "PYTEST_", MARKER_VAR))}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", **HEALTH_ENV)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH", "")) if p)
        cluster = cls(env, token, root)
        try:
            cluster._start_head(head_cpus)
            for name, cpus in (workers or {}).items():
                cluster.add_node(name, cpus)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_head(self, cpus: float) -> None:
        (gcs, dash, agent_http, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr,
         client) = free_ports(9)
        temp_dir = self.root / "head"
        temp_dir.mkdir()
        t0 = time.perf_counter()
        sid, marker = _start_node("head", [
            "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--node-name=head",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_agent}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
            f"--ray-client-server-port={client}", "--min-worker-port=0", "--max-worker-port=0",
            f"--num-cpus={cpus:g}", f"--object-store-memory={STORE_BYTES}"], self.env, temp_dir)
        self.nodes["head"] = Node("head", cpus, sid, marker, temp_dir, head=True)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self._wait(lambda: self._api("/api/jobs/") is not None, 90, "the dashboard to answer")
        self._learn_node_id("head")
        log.warning("raycluster: head started in %.1f s (%s)", time.perf_counter() - t0, self.dashboard)

    def add_node(self, name: str, num_cpus: float) -> Node:
        """Start a worker node (``ray start --address``) and wait until the GCS lists it."""
        if name in self.nodes:
            raise ValueError(f"node {name} exists")
        agent_http, agent_grpc, rt_agent, metrics, node_mgr, obj_mgr = free_ports(6)
        temp_dir = self.root / name
        temp_dir.mkdir()
        t0 = time.perf_counter()
        sid, marker = _start_node(name, [
            f"--address={self.gcs_address}", "--node-ip-address=127.0.0.1", f"--node-name={name}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_agent}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
            "--min-worker-port=0", "--max-worker-port=0",
            f"--num-cpus={num_cpus:g}", f"--object-store-memory={STORE_BYTES}"], self.env, temp_dir)
        node = self.nodes[name] = Node(name, num_cpus, sid, marker, temp_dir)
        self._learn_node_id(name)
        log.warning("raycluster: node %s (%g CPU) joined in %.1f s", name, num_cpus, time.perf_counter() - t0)
        return node

    def stop(self) -> None:
        """Stop every node this cluster started (workers first), remove the temp dirs."""
        for name in sorted(self.nodes, key=lambda n: self.nodes[n].head):
            left = self.nodes[name].stop()
            if left:
                log.warning("raycluster: processes of %s survived SIGKILL: %s", name, left)
        shutil.rmtree(self.root, ignore_errors=True)

    # --------------------------------------------------------------------- faults

    def kill_raylet(self, name: str, wait_dead: float = 60.0) -> int:
        """SIGKILL the raylet of node ``name`` (a machine lost: its workers and object
        store go with it) and wait until the GCS marks the node dead; returns the PID."""
        node = self.nodes[name]
        pid = node.raylet_pid()
        if pid is None:
            raise RuntimeError(f"node {name} has no raylet")
        os.kill(pid, signal.SIGKILL)
        node.killed = True
        t0 = time.perf_counter()
        self._wait(lambda: self.node_state(name) == "DEAD", wait_dead, f"the GCS to mark {name} dead")
        log.warning("raycluster: killed raylet %d of %s; marked dead after %.1f s", pid, name,
                    time.perf_counter() - t0)
        # what is left of the node (agents, workers that outlive the raylet) goes too
        node.stop()
        return pid

    # --------------------------------------------------------------------- state API

    def _api(self, path: str, timeout: float = 10.0) -> Any:
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except (urllib.error.URLError, OSError):
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def _list(self, what: str, detail: bool = True) -> list[dict[str, Any]]:
        data = self._api(f"/api/v0/{what}?limit=10000&detail={'true' if detail else 'false'}")
        if not data or not data.get("result"):
            return []
        return list(data["data"]["result"]["result"])

    def node_list(self) -> list[dict[str, Any]]:
        return self._list("nodes")

    def node_state(self, name: str) -> str | None:
        """``ALIVE`` / ``DEAD`` of our node ``name`` as the GCS sees it (None: not listed)."""
        node = self.nodes[name]
        for n in self.node_list():
            if n.get("node_id") == node.node_id or (not node.node_id and n.get("node_name") == name):
                return n.get("state")
        return None

    def _learn_node_id(self, name: str, timeout: float = 60.0) -> None:
        def listed() -> bool:
            for n in self.node_list():
                if n.get("node_name") == name and n.get("state") == "ALIVE":
                    self.nodes[name].node_id = n["node_id"]
                    return True
            return False
        self._wait(listed, timeout, f"node {name} to be listed")

    def node_name(self, node_id: str) -> str | None:
        return next((n.name for n in self.nodes.values() if n.node_id == node_id), None)

    def actors(self, class_contains: str = "") -> list[dict[str, Any]]:
        """Actors (alive and dead) whose class name contains ``class_contains``, each with
        ``node`` (our node name) added."""
        out = []
        for a in self._list("actors"):
            if class_contains in (a.get("class_name") or ""):
                a["node"] = self.node_name(a.get("node_id") or "")
                out.append(a)
        return out

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{tail(n.temp_dir / 'ray-start.log', 1500)}"
                                 for n in self.nodes.values())
                raise TimeoutError(f"waited {timeout:.0f} s for {what}\n{logs}")
            time.sleep(0.25)

    # --------------------------------------------------------------------- drivers

    def driver_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a job driver run as ``python -m jobs.x`` against this cluster
        (``RAY_ADDRESS`` = the GCS, the token; no marker, so stopping a node spares it)."""
        env = {k: v for k, v in self.env.items() if k != MARKER_VAR and not k.startswith("RAY_health")}
        env["RAY_ADDRESS"] = self.gcs_address
        env.update(extra or {})
        return env


    def submit(self, entrypoint: Sequence[str], *, working_dir: str | os.PathLike | None = ROOT,
               runtime_env: dict[str, Any] | None = None, timeout: float = 600,
               extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """``ray job submit [--working-dir D] [--runtime-env-json J] -- entrypoint`` to the
        head's Jobs API; waits for the job and returns the CompletedProcess (stdout has the
        job's log; the return code is non-zero when the job failed)."""
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", f"--address={self.dashboard}"]
        if working_dir is not None:
            cmd += ["--working-dir", str(working_dir)]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        cmd += [*extra_args, "--", *entrypoint]
        env = self.driver_env({"RAY_ADDRESS": self.dashboard})
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start_driver(cmd: list[str], env: Mapping[str, str], log_path: Path, cwd: str | os.PathLike | None = None
                 ) -> subprocess.Popen:
    """A job driver in a session of its own (so it can be killed with everything it
    spawned), its output to ``log_path``."""
    out = open(log_path, "wb")  # noqa: SIM115 - closed by the caller's wait_driver
    return subprocess.Popen(cmd, env=dict(env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, start_new_session=True)


def kill_driver(proc: subprocess.Popen) -> None:
    """SIGKILL a driver and its session (no goodbye to the cluster: a crashed client)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()
