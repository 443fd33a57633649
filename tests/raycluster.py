"""Local Ray clusters started with ``ray start`` for tests, stopped by pid.

Two flavours, both with their own short temp folders, token authentication
disabled for them and their clients (``RAY_AUTH_MODE=disabled``), and
stopped by killing exactly the processes that belong to them (never ``ray
stop``, which would kill every Ray on the machine):

- :class:`LocalHead`: one ``ray start --head`` on 127.0.0.1.
- :class:`LocalCluster`: a head plus worker nodes, each node its own ``ray
  start`` on its own loopback address (127.0.0.2, 127.0.0.3, ...), so that a
  single node can be killed during a test.

Why not 127.0.0.1 for the cluster: Ray on Linux rewrites exactly
"127.0.0.1", "localhost" and "::1" (``resolve_ip_for_localhost`` in
``ray/_private/services.py``) into the machine's outward address, both for
``--node-ip-address`` and for the ``--address`` a worker node joins. The
switch that prevents this, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (used by
LocalHead), also makes ``ray start --address`` of a worker node abort
("Multi-node Ray clusters are not supported on Windows and OSX"). Linux routes
all of 127.0.0.0/8 to the loopback interface, and Ray leaves the other
addresses of that block alone, so the cluster's head advertises 127.0.0.2 and
worker node k advertises 127.0.0.(2+k): every connection between the nodes,
the driver and the dashboard stays on loopback.

Ray's own gRPC servers (GCS, raylets, agents) listen on the wildcard address
whatever ``--node-ip-address`` says (Ray 2.60 has no option for that); the
dashboard is bound to 127.0.0.1 and only loopback addresses are ever
advertised or dialled (see :meth:`LocalCluster.remote_peers`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """Pids of this machine's processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def processes_using(folder: str) -> list[int]:
    """Pids of this machine's processes holding a file under ``folder`` open (e.g. a Ray log file)."""
    prefix = folder.rstrip("/") + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process of this machine."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parentheses
            children.setdefault(parent, []).append(int(entry.name))
    return children


def with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants.

    Ray renames some processes it starts (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``, the workers ``ray::IDLE``, ``ray::<Actor>``), so
    their command line no longer names the temp folder; they are children
    of the node's raylet (until it dies: then they are re-parented to init,
    which is why :func:`kill_processes` remembers what it found).
    """
    children = _children()
    found, stack = set(), list(pids)
    while stack:
        pid = stack.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            stack.extend(children.get(pid, []))
    return sorted(found)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (tells a pid from a reused one), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie is dead already


def kill_processes(find, term_timeout: float = 5) -> None:
    """SIGTERM the pids ``find()`` returns, then SIGKILL whatever of them is left.

    Every pid ever found is remembered (with its start time, so that a
    reused pid is never signalled): a Ray agent whose raylet died first is
    no longer a descendant of anything ``find`` knows, and agents ignore
    SIGTERM once their raylet is gone.
    """
    known: dict[int, str] = {}

    def alive() -> list[int]:
        for pid in find():
            started = _start_time(pid)
            if started is not None:
                known.setdefault(pid, started)
        return [pid for pid, started in known.items() if _start_time(pid) == started]

    for sig, timeout in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 15)):
        pids = alive()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = alive()
        if not pids:
            return


class _Started:
    """A Ray started for tests: ``dashboard_url`` on 127.0.0.1; as a context manager, stopped on
    leaving, or if starting fails."""

    dashboard_port: int

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalHead(_Started):
    """``ray start --head`` on 127.0.0.1; use as a context manager."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: unix socket paths are limited
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_AUTH_MODE": "disabled",
            # Without this, Ray on Linux replaces 127.0.0.1 with the machine's address.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def start(self) -> "LocalHead":
        command = [
            str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
        ]
        subprocess.run(command, env=self.env, check=True, capture_output=True, timeout=180)
        self._wait_for_job_server()
        return self

    def _wait_for_job_server(self, timeout: float = 120) -> None:
        """Until the job server answers the job list request ``ray job list`` makes (an HTTP GET)."""
        import urllib.request

        deadline, error = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/", timeout=5).close()
                return
            except OSError as failure:
                error = failure
                time.sleep(0.5)
        raise TimeoutError(f"the job server at {self.dashboard_url} did not answer: {error}")

    def pids(self) -> list[int]:
        """This head's processes: those naming its temp folder, or writing logs there (the renamed
        ``ray::`` agents and workers), the Ray client server (it names only the GCS address), and
        their descendants."""
        return with_descendants(processes_mentioning(self.temp_dir) + processes_using(self.temp_dir)
                                + processes_mentioning(f"ray.util.client.server --address={self.gcs_address} "))

    def stop(self) -> None:
        """Kill every process of this head, by pid; remove its temp folder."""
        kill_processes(self.pids)
        if not self.pids():
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalNode:
    """One node of a :class:`LocalCluster`: its loopback address, temp folder and processes."""

    def __init__(self, ip: str, num_cpus: int, head: bool, marks: tuple[str, ...] = ()) -> None:
        self.ip = ip
        self.num_cpus = num_cpus
        self.head = head
        self.temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: unix socket paths are limited
        self.marks = (self.temp_dir, *marks)
        self.node_id: str | None = None  # set once the node has registered with the GCS

    def pids(self) -> list[int]:
        """The node's processes: those naming its temp folder (raylet, log monitor and, on the
        head, GCS, dashboard and autoscaler monitor) or another of its ``marks``, those with a
        file open under its temp folder, and their descendants (agents, workers)."""
        return with_descendants([pid for mark in self.marks for pid in processes_mentioning(mark)]
                                + processes_using(self.temp_dir))

    def kill(self) -> list[int]:
        """Kill the node's processes at once with SIGKILL, as a machine failure would; return their pids."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def __repr__(self) -> str:
        kind = "head" if self.head else "worker"
        return f"LocalNode({kind} {self.ip}, {self.num_cpus} CPU, {self.temp_dir}, node_id={self.node_id})"


class LocalCluster(_Started):
    """A head and ``num_workers`` worker nodes on this machine, each its own ``ray start``.

    The head gets ``head_cpus`` (default 0: it runs the GCS, the dashboard,
    the job server and the job's driver, which trains the model; with no CPU
    resource no actor is placed there, so every evaluation actor lives on a
    worker node, which makes "workers on several nodes" and "losing a node
    loses an actor" certain rather than up to the scheduler). Worker nodes
    get ``worker_cpus`` each (default 1). ``system_env`` is added to every
    node's environment, e.g. ``RAY_health_check_period_ms`` to detect a dead
    node sooner.

    Use as a context manager; leaving it kills every process of every node,
    by pid. ``env`` is the environment for clients (``ray job submit``, a
    driver with ``RAY_ADDRESS=cluster.gcs_address``).
    """

    HEAD_IP = "127.0.0.2"
    OBJECT_STORE_BYTES = 200 * 1024 * 1024  # per node; Ray's default is 30 % of the machine's memory each

    def __init__(self, num_workers: int = 2, head_cpus: int = 0, worker_cpus: int = 1,
                 system_env: dict[str, str] | None = None) -> None:
        self.num_workers = num_workers
        self.worker_cpus = worker_cpus
        self.gcs_port = free_port(self.HEAD_IP)
        # The head's Ray client server names only the GCS address, no temp folder.
        self.head = LocalNode(self.HEAD_IP, head_cpus, head=True,
                              marks=(f"ray.util.client.server --address={self.gcs_address} ",))
        self.workers: list[LocalNode] = []
        self.removed: list[LocalNode] = []
        self.slow_starts: list[str] = []  # output of `ray start`s that timed out waiting for registration
        self.dashboard_port = free_port()
        self._next_ip = 3
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")},
            "RAY_AUTH_MODE": "disabled",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.node_env = {**self.env, **(system_env or {})}

    @property
    def gcs_address(self) -> str:
        return f"{self.HEAD_IP}:{self.gcs_port}"

    @property
    def nodes(self) -> list[LocalNode]:
        return [self.head, *self.workers]

    def _node_ports(self, node: LocalNode) -> list[str]:
        # Ports with a fixed default (dashboard agent 52365, ...) would collide between nodes and with
        # other Rays on the machine; the rest Ray picks at random.
        return [f"--dashboard-agent-listen-port={free_port(node.ip)}", f"--metrics-export-port={free_port(node.ip)}",
                f"--object-store-memory={self.OBJECT_STORE_BYTES}", f"--temp-dir={node.temp_dir}",
                "--disable-usage-stats"]

    def _ray_start(self, node: LocalNode, *args: str) -> bool:
        """``ray start`` for ``node``; False when it gave up waiting for the node to register (a worker
        only: `ray start` gives a new raylet a fixed 30 s, too little on a busy 2-core machine)."""
        command = [str(BIN / "ray"), "start", f"--node-ip-address={node.ip}", f"--num-cpus={node.num_cpus}",
                   *args, *self._node_ports(node)]
        done = subprocess.run(command, env=self.node_env, capture_output=True, text=True, timeout=180)
        if done.returncode == 0:
            return True
        output = f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if not node.head and "timed out during startup" in done.stderr:
            self.slow_starts.append(output)
            return False
        raise RuntimeError(output)

    def start(self) -> "LocalCluster":
        self._ray_start(
            self.head, "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port(self.HEAD_IP)}",
        )
        for _ in range(self.num_workers):  # one at a time: starting nodes loads the machine
            self._start_worker()
        self.wait_for_nodes()
        return self

    def _start_worker(self, attempts: int = 3, registration_timeout: float = 60) -> LocalNode:
        """Start a worker node; one that has not registered ``registration_timeout`` s after its
        `ray start` gave up waiting is killed and started again, on new ports and a new temp folder
        (on a loaded machine its raylet sometimes never registers: seen once)."""
        ip = f"127.0.0.{self._next_ip}"
        self._next_ip += 1
        for attempt in range(1, attempts + 1):
            node = LocalNode(ip, self.worker_cpus, head=False)
            self.workers.append(node)
            if self._ray_start(node, f"--address={self.gcs_address}") or self._registers(node, registration_timeout):
                return node
            self.slow_starts.append(f"attempt {attempt}: {node} not registered; its raylet's log ends with:\n"
                                    + _log_tail(Path(node.temp_dir)))
            self.workers.remove(node)
            self.removed.append(node)  # its processes and temp folder go when the cluster stops
            node.kill()
        raise TimeoutError(f"worker node {ip} did not register in {attempts} attempts:\n" + "\n".join(self.slow_starts))

    def _registers(self, node: LocalNode, timeout: float) -> bool:
        """Whether ``node`` shows up alive in the GCS within ``timeout`` s."""
        return any(not isinstance(alive, OSError) and node.ip in {other["node_ip"] for other in alive}
                   for alive in self._alive_answers(timeout))

    def add_worker(self) -> LocalNode:
        """Start one more worker node (e.g. a replacement, as an autoscaler would) and wait until it is alive."""
        node = self._start_worker()
        self.wait_for_nodes()
        return node

    def remove_worker(self, node: LocalNode) -> list[int]:
        """Kill a worker node's processes by pid (SIGKILL, no goodbye to the GCS); return the pids."""
        assert not node.head, "the head holds the GCS; killing it ends the cluster"
        self.workers.remove(node)
        self.removed.append(node)
        return node.kill()

    def alive_nodes(self) -> list[dict]:
        """The GCS's alive nodes, from the dashboard's state API (``ray list nodes``)."""
        url = f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=1"
        with urllib.request.urlopen(url, timeout=10) as answer:
            data = json.load(answer)["data"]["result"]["result"]
        return [node for node in data if node["state"] == "ALIVE"]

    def _alive_answers(self, timeout: float) -> Iterator[list[dict] | OSError]:
        """:meth:`alive_nodes` once a second for ``timeout`` s, or the OSError while the dashboard is not up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                answer = self.alive_nodes()
            except OSError as error:
                answer = error
            yield answer
            time.sleep(1)

    def wait_for_nodes(self, timeout: float = 180) -> None:
        """Until every node of ``nodes`` (and no other) is alive in the GCS; records their node ids."""
        wanted = {node.ip: node for node in self.nodes}
        last = None
        for last in self._alive_answers(timeout):
            if not isinstance(last, OSError) and sorted(node["node_ip"] for node in last) == sorted(wanted):
                for node in last:
                    wanted[node["node_ip"]].node_id = node["node_id"]
                return
        raise TimeoutError(f"nodes {sorted(wanted)} not all alive after {timeout} s; last answer: {last}\n"
                           + "\n".join(self.slow_starts))

    def wait_until_dead(self, node: LocalNode, timeout: float = 120) -> None:
        """Until the GCS has marked a removed node dead."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.node_id not in {alive["node_id"] for alive in self.alive_nodes()}:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the GCS still lists {node} as alive after {timeout} s")

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of a class the GCS knows of, dead or alive (``ray list actors --detail``)."""
        url = (f"{self.dashboard_url}/api/v0/actors?limit=10000&detail=1"
               f"&filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}")
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["data"]["result"]["result"]

    def pids(self) -> list[int]:
        """Every process of every node, removed ones included."""
        return sorted({pid for node in [*self.nodes, *self.removed] for pid in node.pids()})

    def remote_peers(self, extra_pids: tuple[int, ...] = ()) -> list[str]:
        """TCP sockets of the cluster's processes (and ``extra_pids``, e.g. a driver) with a
        non-loopback end, as "local -> remote" addresses; listening on a wildcard address is fine.

        Empty when every connection they hold is on loopback.
        """
        inodes = set()
        for pid in [*self.pids(), *extra_pids]:
            try:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                pass
        peers = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                for endpoint in (fields[1], fields[2]):
                    address = _decode_address(endpoint)
                    if not _loopback_or_wildcard(address):
                        peers.append(f"{_decode_address(fields[1])} -> {_decode_address(fields[2])}")
        return sorted(set(peers))

    def stop(self) -> None:
        """Kill every process of every node (removed ones included), by pid; remove their temp folders."""
        kill_processes(self.pids)
        if not self.pids():
            for node in [*self.nodes, *self.removed]:
                shutil.rmtree(node.temp_dir, ignore_errors=True)


def _log_tail(temp_dir: Path, characters: int = 1500) -> str:
    """The end of a node's raylet logs (``session_latest/logs/raylet.{out,err}``), for a failure's message."""
    tails = []
    for log in sorted(temp_dir.glob("session_*/logs/raylet.*")):
        try:
            tails.append(f"{log}:\n{log.read_text(errors='replace')[-characters:]}")
        except OSError as error:
            tails.append(f"{log}: {error}")
    return "\n".join(tails) or f"(no raylet log under {temp_dir})"


def _decode_address(hex_endpoint: str) -> str:
    """An address of /proc/net/tcp{,6} ("0100007F:1F90") as text, without the port."""
    address = bytes.fromhex(hex_endpoint.split(":")[0])
    if len(address) == 4:
        return socket.inet_ntop(socket.AF_INET, address[::-1])
    words = b"".join(address[i:i + 4][::-1] for i in range(0, 16, 4))  # four little-endian 32-bit words
    return socket.inet_ntop(socket.AF_INET6, words)


def _loopback_or_wildcard(address: str) -> bool:
    if address.startswith("::ffff:"):
        address = address[7:]
    return address.startswith("127.") or address in ("0.0.0.0", "::", "::1")
