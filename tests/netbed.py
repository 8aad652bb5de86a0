"""The network test bed: real network namespaces on one Linux bridge, and real faults.

Layout: one bridge ``<prefix>br`` holding ``10.X.Y.1/24`` in the test's own namespace, and
one namespace per member (a replica, the broker, the simulator), each joined to the bridge
by a veth pair and given ``10.X.Y.<10+i>``. Members reach each other and the test reaches
them all through the bridge; nothing listens on this machine's real interfaces.

Faults are rules in a member's own namespace, so they hit exactly that member's links:

- ``partition(member, peer, direction)``: nft drops of the traffic from and/or to
  ``peer``'s address ("both", "out": the member's packets never arrive, "in": the answers
  never come back);
- ``lossy(member, peer, loss_pct, delay_ms)``: random loss with nft ``numgen``, and delay
  with ``tc netem`` where the kernel has it (``NetBed.has_netem``); without it the delay is
  refused, not faked;

each a context manager that undoes itself in ``finally`` and is bounded by ``max_s``
(a watchdog thread undoes it at the deadline even if the test hangs). ``NetBed.close``
deletes every namespace, link and rule it made (and ends the processes left in its
namespaces), and ``sweep()`` removes what a killed earlier run left behind (a bed
records its owner's pid in ``OWNERS``, so a sweep never touches the bed of a run still
going, e.g. a chaos run next to the tests). Processes run
inside a namespace through ``ip netns exec`` (``Member.wrap``); sockets of this process are
bound inside one with ``in_namespace`` (setns on the calling thread only).

Root is needed (CI and the dev machines run tests as root); ``require()`` skips with the
kernel's own error where namespaces, veth, bridges or nft are refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FAMILY = "lbt"  # every name the bed makes starts with this, so sweep() finds leftovers
TAG_LEN = 4  # hex digits of a bed's tag, right after FAMILY in every name it makes
OWNERS = Path("/run/lbt-owners")  # <tag> -> the pid of the process that made that bed
CLONE_NEWNET = 0x40000000


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def in_ns(ns: str, *cmd: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        input=stdin,
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"in {ns}: {' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Member:
    """One namespace on the bed."""

    name: str
    ns: str
    address: str
    inner: str  # the veth end inside the namespace

    @property
    def wrap(self) -> list[str]:
        """Prefix for a command that must run inside this namespace."""
        return ["ip", "netns", "exec", self.ns]


@dataclass
class NetBed:
    """See the module docstring."""

    tag: str = field(default_factory=lambda: secrets.token_hex(TAG_LEN // 2))
    members: dict[str, Member] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        rng = random.Random()
        self.net = f"10.{rng.randrange(100, 250)}.{rng.randrange(1, 250)}"
        self.prefix = f"{FAMILY}{self.tag}"
        self.bridge = f"{self.prefix}br"
        self.gateway = f"{self.net}.1"

    def up(self) -> NetBed:
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.tag).write_text(f"{os.getpid()}\n")
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add(self, name: str) -> Member:
        """A new namespace joined to the bridge (its loopback up too)."""
        with self._lock:
            index = len(self.members)
            member = Member(
                name, f"{self.prefix}-{name}", f"{self.net}.{10 + index}", f"{self.prefix}v{index}n"
            )
            self.members[name] = member
        outer = f"{self.prefix}v{index}h"
        ip("netns", "add", member.ns)
        ip("link", "add", outer, "type", "veth", "peer", "name", member.inner)
        ip("link", "set", outer, "master", self.bridge, "up")
        ip("link", "set", member.inner, "netns", member.ns)
        ip("-n", member.ns, "addr", "add", f"{member.address}/24", "dev", member.inner)
        ip("-n", member.ns, "link", "set", member.inner, "up")
        ip("-n", member.ns, "link", "set", "lo", "up")
        # the test's own namespace (the gateway) reaches every member and vice versa
        ip("-n", member.ns, "route", "add", "default", "via", self.gateway)
        return member

    # -- faults ---------------------------------------------------------------------------

    def _nft(self, member: Member, script: str) -> None:
        in_ns(member.ns, "nft", "-f", "-", stdin=script)

    @contextlib.contextmanager
    def partition(
        self, member: Member, peer: str, direction: str = "both", *, max_s: float = 120.0
    ) -> Iterator[None]:
        """Drop ``member``'s traffic to (``out``) and/or from (``in``) address ``peer``."""
        if direction not in ("both", "in", "out"):
            raise ValueError(direction)
        table = f"{FAMILY}_cut_{secrets.token_hex(3)}"
        rules = []
        if direction in ("both", "out"):
            rules.append(f"chain o {{ type filter hook output priority 0; ip daddr {peer} drop; }}")
        if direction in ("both", "in"):
            rules.append(f"chain i {{ type filter hook input priority 0; ip saddr {peer} drop; }}")
        body = "".join(f" {rule}\n" for rule in rules)
        self._nft(member, f"table inet {table} {{\n{body}}}\n")
        with self._bounded(lambda: self._drop_table(member, table), max_s):
            yield

    @contextlib.contextmanager
    def lossy(
        self,
        member: Member,
        peer: str,
        *,
        loss_pct: float = 0.0,
        delay_ms: int = 0,
        max_s: float = 300.0,
    ) -> Iterator[None]:
        """Random loss (both directions) and delay (outbound) on ``member``'s link to ``peer``."""
        undo: list[tuple[str, ...]] = []
        table = f"{FAMILY}_loss_{secrets.token_hex(3)}"
        if loss_pct > 0:
            per_mille = round(loss_pct * 10)
            self._nft(
                member,
                f"table inet {table} {{\n"
                f" chain o {{ type filter hook output priority 0; ip daddr {peer} "
                f"numgen random mod 1000 < {per_mille} drop; }}\n"
                f" chain i {{ type filter hook input priority 0; ip saddr {peer} "
                f"numgen random mod 1000 < {per_mille} drop; }}\n}}\n",
            )
        if delay_ms > 0:
            if not self.has_netem():
                raise RuntimeError("this kernel has no sch_netem: delay cannot be injected")
            dev = member.inner
            in_ns(
                member.ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                dev,
                "root",
                "netem",
                "delay",
                f"{delay_ms}ms",
            )
            undo.append(("tc", "qdisc", "del", "dev", dev, "root"))

        def restore() -> None:
            for cmd in undo:
                in_ns(member.ns, *cmd, check=False)
            self._drop_table(member, table)

        with self._bounded(restore, max_s):
            yield

    def _drop_table(self, member: Member, table: str) -> None:
        in_ns(member.ns, "nft", "delete", "table", "inet", table, check=False)

    @contextlib.contextmanager
    def _bounded(self, undo: object, max_s: float) -> Iterator[None]:
        """Run ``undo`` on exit, or at ``max_s`` if the body is still running then."""
        assert callable(undo)
        once = threading.Lock()

        def fire() -> None:
            if once.acquire(blocking=False):
                undo()

        timer = threading.Timer(max_s, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            fire()

    @staticmethod
    def has_netem() -> bool:
        ns = f"{FAMILY}probe{secrets.token_hex(2)}"
        try:
            ip("netns", "add", ns)
            done = subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem"],
                capture_output=True,
                check=False,
                timeout=30,
            )
            return done.returncode == 0
        finally:
            ip("netns", "del", ns, check=False)

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        for member in list(self.members.values()):
            end_namespace(member.ns)
        ip("link", "del", self.bridge, check=False)
        self.members.clear()
        (OWNERS / self.tag).unlink(missing_ok=True)


def end_namespace(ns: str) -> None:
    """SIGKILL what still runs in ``ns`` (processes the bed's tests started), then delete it."""
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", ns, check=False)


def _orphan(name: str) -> bool:
    """Is ``name`` one of the bed's, made by a process that is gone?"""
    if not name.startswith(FAMILY) or name.startswith(f"{FAMILY}probe"):
        return False  # probes live for a moment and are deleted in a finally
    owner = OWNERS / name[len(FAMILY) : len(FAMILY) + TAG_LEN]
    try:
        os.kill(int(owner.read_text()), 0)
    except (OSError, ValueError):
        owner.unlink(missing_ok=True)
        return True
    return False


def sweep() -> None:
    """Remove the namespaces and bridges an earlier, killed run of the bed left behind."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if _orphan(name):
            end_namespace(name)
    for line in ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if _orphan(name):
            ip("link", "del", name, check=False)


def require() -> None:
    """Skip (with the reason) where this machine cannot host the bed."""
    if os.geteuid() != 0:
        pytest.skip("the network test bed needs root (network namespaces, nft)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/test installs iproute2 and nftables)")
    probe = f"{FAMILY}probe{secrets.token_hex(2)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        pytest.skip(f"this kernel refuses network namespaces: {made.stderr.strip()}")
    ip("netns", "del", probe, check=False)


@contextlib.contextmanager
def in_namespace(member: Member) -> Iterator[None]:
    """Run the body on this thread inside ``member``'s network namespace (sockets made here
    stay there); back to the original namespace afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{member.ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {member.ns}")
        try:
            yield
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)
