"""Hosts that are hosts, on one machine: a network namespace per host on a private bridge, its own temp folder.

    with PrivateHosts("tpd") as hosts:               # root; run from a network namespace of your own (unshare -n)
        head = hosts.add("head")                     # 10.231.9.2 on the drill's bridge, its own /tmp/tphost
        subprocess.run(head.argv(["ray", "start", "--head", f"--node-ip-address={head.ip}", ...]))
        hosts.join()                                 # the calling process gets an address on the bridge too

Each host is a named network namespace (``ip netns add``) with one veth into a bridge that lives in a namespace of
its own, an address of 10.231.9.0/24 and no route anywhere else, so its listeners are reachable from the other hosts
and from nothing outside. Each host also has a mount namespace of its own with a tmpfs over ``HOST_TMP`` (Ray's
sockets and session files, ``TMPDIR``) and its own host name, held by a sleeping anchor process that every process of
the host enters (``nsenter``): processes of one host share that folder, as on one machine, and a process on one host
cannot reach another's loopback or Unix sockets, as on separate machines (``../shared/STACK.md``). Processes are ordinary PIDs of
this machine; stop them by PID. ``close`` deletes the namespaces (their veths go with them).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.231.9"
HOST_TMP = "/tmp/tphost"  # short: Ray's socket paths must stay under 108 bytes


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    anchor: subprocess.Popen | None = None  # holds the host's mount and UTS namespaces for every later process

    def start(self) -> None:
        """The host's own mount namespace (an empty tmpfs over HOST_TMP) and host name, held by a sleeping process:
        every process started on the host later enters these, so they share one /tmp/tphost as one machine's do."""
        script = f"mount -t tmpfs -o size=4g,mode=1777 tmpfs {HOST_TMP} && hostname {self.name} && exec sleep infinity"
        self.anchor = subprocess.Popen(["ip", "netns", "exec", self.ns, "unshare", "--mount", "--uts", "--propagation",
                                        "private", "--", "sh", "-c", script], start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:  # mounted once the anchor has exec'd sleep
            try:
                if Path(f"/proc/{self.anchor.pid}/cmdline").read_bytes().startswith(b"sleep"):
                    return
            except OSError:
                pass
            if self.anchor.poll() is not None:
                raise RuntimeError(f"host {self.name}: its namespaces could not be made (rc {self.anchor.returncode})")
            time.sleep(0.02)
        raise RuntimeError(f"host {self.name}: its namespaces were not ready after 10 s")

    def argv(self, args: list[str]) -> list[str]:
        """``args`` run on this host: its network, mount and UTS namespaces (exec'd by nsenter, so the returned
        process's PID is the command's)."""
        return ["nsenter", "-t", str(self.anchor.pid), "-n", "-m", "-u", "--", *args]

    def stop(self) -> None:
        if self.anchor is not None and self.anchor.poll() is None:
            self.anchor.kill()
            self.anchor.wait(timeout=10)


class PrivateHosts:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.bridge_ns = f"{prefix}-br"
        self.hosts: dict[str, Host] = {}
        self._next = 2
        self._made: list[str] = []

    def __enter__(self) -> "PrivateHosts":
        Path(HOST_TMP).mkdir(exist_ok=True)
        self._add_ns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        kill_namespace(ns)  # a leftover of an interrupted drill
        _ip("netns", "add", ns)
        self._made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _wire(self, ns: str | None, index: int) -> str:
        """A veth from ``ns`` (None: the caller's namespace) to the bridge; returns the address given to it."""
        address = f"{SUBNET}.{index}"
        port = f"{self.prefix[:6]}p{index}"
        here = ["netns", ns] if ns else []
        _ip("link", "add", "eth0" if ns else f"{self.prefix[:6]}h{index}", *here, "type", "veth", "peer", "name",
            port, "netns", self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0", "up")
        dev = "eth0" if ns else f"{self.prefix[:6]}h{index}"
        where = ["-n", ns] if ns else []
        _ip(*where, "addr", "add", f"{address}/24", "dev", dev)
        _ip(*where, "link", "set", dev, "up")
        return address

    def add(self, name: str) -> Host:
        ns = f"{self.prefix}-{name}"
        self._add_ns(ns)
        host = Host(name, ns, self._wire(ns, self._next))
        host.start()
        self._next += 1
        self.hosts[name] = host
        return host

    def join(self) -> str:
        """Give the calling process's own namespace an address on the bridge (the operator's laptop)."""
        address = self._wire(None, 1)
        return address

    def close(self) -> None:
        """Stop every process still in a namespace of these hosts (``ip netns pids``: whatever started it), then
        delete the namespaces."""
        for host in self.hosts.values():
            host.stop()
        for ns in reversed(self._made):
            kill_namespace(ns)
        self._made.clear()


def kill_namespace(ns: str) -> None:
    import os
    import signal

    for _ in range(3):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.5)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
