"""Kill tests without paying Python's start-up per kill: a zygote and its workloads.

Theory of operation
-------------------
A :class:`Zygote` is one long-lived child process (``python -m
persist.testing.crash``) that has imported persist and its drivers once.  For
each round the test sends it one JSON line naming a *job* and its arguments;
the zygote ``fork()``\\ s a fresh writer process for it (the zygote itself
runs no thread, so the fork is safe), answers with the writer's pid, and
later with its exit status.  The test ``SIGKILL``\\ s the writer -- a real
process, killed by the kernel at whatever instruction it was -- and then
checks the store from the test process.  A round costs a ``fork`` instead
of an interpreter start (a round trip of 31 ms against 2.4 s for starting
Python and importing persist with its drivers, measured on the shared CI machine
under load).

A writer records what it was *told* was durable in an acknowledgement file
(see :class:`Acks`): one line per acknowledgement, written with one
``os.write`` to an ``O_APPEND`` descriptor *after* the library returned and
*before* the writer's next step.  A ``SIGKILL`` cannot lose a line that the
kernel accepted, and a line cut by the kill is ignored (no newline).

The transfer workload (:func:`job_transfers`) and its check
(:func:`check_transfers`) prove DESIGN §3 rule 4 as follows.  Sixteen
threads move money between accounts in atomic blocks of one to three
transfers (the accounts of a block are locked for the whole block, as the
application must do: blocks do not isolate), log every transfer under
``(round, thread, seq)`` in the same block, and sometimes commit-wait and
acknowledge.  A marker thread writes ``marker[(round, m)]`` every few
milliseconds holding the last finished transfer of every thread, and every
transfer logs the newest marker it saw.  After a kill the stored state must
be:

* *whole*: every account's balance is the initial one plus the deltas of the
  transfers that are present, and the total holds (an atomic block landed
  whole or not at all);
* *acknowledged*: every acknowledged transfer is present;
* *a prefix of the wave sequence*: each thread's transfers are a gap-free
  prefix, the markers too, a present marker implies every transfer finished
  before it was written, and a present transfer implies the marker it saw.
  Waves are linearized, so a state that is not the state after some wave k
  violates one of these for the writes that straddle the missing wave.

Hook for replicas (push / restore)
----------------------------------
Kills during ``push`` and ``restore`` are not tested here yet: those
operations are being built elsewhere.  To add them, register a job with
:func:`job` (a function of JSON arguments that runs in the forked writer and
writes :class:`Acks` lines, e.g. ``"pushed <root count>"``), and drive it
with :func:`kill_rounds` and a checker that opens the replica and asserts
DESIGN §3 rule 5 (the replica is at its previous or its new root, never
between; ``verify`` of the replica is clean).  ``tests/torture/test_crash.py``
shows the pattern for the upgrade and rotation jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACCOUNTS",
    "INITIAL",
    "Acks",
    "Round",
    "TransferState",
    "Zygote",
    "check_transfers",
    "job",
    "kill_rounds",
    "read_transfers",
]

#: Accounts of the transfer workload and each one's opening balance.
ACCOUNTS = 64
INITIAL = 1000

Job = Callable[[Mapping[str, Any]], None]
_JOBS: dict[str, Job] = {}


def job(name: str) -> Callable[[Job], Job]:
    """Register a function as a job the zygote can run in a forked writer."""

    def register(fn: Job) -> Job:
        _JOBS[name] = fn
        return fn

    return register


# -- acknowledgements -----------------------------------------------------------


class Acks:
    """The writer's side of the acknowledgement file: one atomic append per line."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[str]:
        """The complete lines of ``path`` (a line the kill cut short is not one)."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        return [line.decode() for line in lines[:-1]]  # the last piece has no newline


# -- the zygote -------------------------------------------------------------------


class Zygote:
    """A child process that forks one writer per :meth:`start`; see the module docstring."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "persist.testing.crash"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._expect("ready", timeout=120)
        self.forks = 0

    def _expect(self, what: str, timeout: float) -> Any:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the zygote sent no {what} within {timeout} s")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote died (exit {self._proc.poll()}) before {what}")
        message = json.loads(line)
        if what not in message:
            raise RuntimeError(f"the zygote sent {message!r}, expected {what}")
        return message[what]

    def start(self, name: str, **args: Any) -> int:
        """Fork a writer running job ``name``; return its pid."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"job": name, "args": args}) + "\n")
        self._proc.stdin.flush()
        self.forks += 1
        return int(self._expect("pid", timeout=60))

    def wait(self, timeout: float = 120) -> int:
        """The exit status of the last writer: its exit code, or ``-signal``."""
        return int(self._expect("status", timeout=timeout))

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    """The zygote's loop: one job per input line, a fork per job."""
    import persist
    import persist.cli
    import persist.kvs.leveldb
    import persist.kvs.sqlite

    with contextlib.suppress(ImportError):  # the driver is an extra
        import persist.kvs.postgresql  # noqa: F401
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the writer
            _run_job(request["job"], request["args"])
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"status": code}) + "\n")
        out.flush()


def _run_job(name: str, args: Mapping[str, Any]) -> None:
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        if args.get("stderr"):
            err = os.open(args["stderr"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(err, 2)
        _JOBS[name](args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)


# -- driving rounds ---------------------------------------------------------------


@dataclass
class Round:
    """What one round of :func:`kill_rounds` saw."""

    pid: int
    status: int
    killed: bool
    delay: float


def wait_for_line(path: str | os.PathLike[str], prefix: str, timeout: float) -> bool:
    """Poll the acknowledgement file until a line starting with ``prefix`` is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.startswith(prefix) for line in Acks.read(path)):
            return True
        time.sleep(0.002)
    return False


def kill_rounds(
    zygote: Zygote,
    name: str,
    args: Mapping[str, Any],
    *,
    rng: random.Random,
    delay: Callable[[random.Random], float],
    after: str | None = None,
    check: Callable[[Round], None],
    rounds: int,
) -> list[Round]:
    """Run job ``name`` ``rounds`` times, SIGKILL each writer ``delay(rng)``
    seconds after it wrote the acknowledgement line starting with ``after``
    (or after the fork), and call ``check`` after each."""
    seen = []
    for _ in range(rounds):
        pid = zygote.start(name, **args)
        if after is not None and not wait_for_line(args["acks"], after, 60):
            os.kill(pid, signal.SIGKILL)
            status = zygote.wait()
            raise AssertionError(f"the writer never wrote {after!r} (status {status})")
        pause = delay(rng)
        time.sleep(pause)
        with contextlib.suppress(ProcessLookupError):  # it finished already
            os.kill(pid, signal.SIGKILL)
        status = zygote.wait()
        outcome = Round(pid, status, status == -signal.SIGKILL, pause)
        check(outcome)
        seen.append(outcome)
    return seen


# -- the transfer workload ----------------------------------------------------------


def _open_args(args: Mapping[str, Any]) -> dict[str, Any]:
    from ..db.rootlog import LogLimits
    from ..ebs import KdfParams

    opts: dict[str, Any] = {
        "kdf": KdfParams.weak_for_tests(),
        "allow_weak_kdf": True,
        "freshness": args.get("freshness", False),
    }
    if args.get("root_log") is not None:
        opts["root_log"] = LogLimits(*args["root_log"])
    return opts


@job("transfers")
def job_transfers(args: Mapping[str, Any]) -> None:
    """Sixteen threads of transfers until killed (or ``seconds`` pass); see the module doc."""
    import persist

    acks = Acks(args["acks"])
    rnd, threads = int(args["round"]), int(args.get("threads", 16))
    db = persist.open(args["location"], args.get("passphrase", "pw"), **_open_args(args))
    acks.write("open")
    accounts, log, markers = db.table("accounts"), db.table("log"), db.table("markers")
    if len(accounts) == 0:
        with db.atomic():
            for a in range(ACCOUNTS):
                accounts[a] = INITIAL
        db.commit_wait()
        acks.write("init")
    locks = [threading.Lock() for _ in range(ACCOUNTS)]
    done = [-1] * threads
    seen_marker = [0]
    stop = threading.Event()
    failures: list[BaseException] = []

    def transfers(tid: int) -> None:
        rng = random.Random(f"{args.get('seed', 0)}/{rnd}/{tid}")
        seq = 0
        try:
            while not stop.is_set():
                block = []
                for _ in range(rng.randint(1, 3)):
                    x, y = rng.sample(range(ACCOUNTS), 2)
                    block.append((x, y, rng.randint(1, 50)))
                held = sorted({a for x, y, _ in block for a in (x, y)})
                for a in held:
                    locks[a].acquire()
                # read before the block starts: a marker written after that may
                # land in a later wave than this block (it is open meanwhile)
                marker = seen_marker[0]
                try:
                    with db.atomic():
                        for x, y, amount in block:
                            accounts[x] = accounts[x] - amount
                            accounts[y] = accounts[y] + amount
                            log[(rnd, tid, seq)] = [x, y, amount, marker]
                            seq += 1
                finally:
                    for a in held:
                        locks[a].release()
                done[tid] = seq - 1
                if rng.random() < 0.4:
                    db.commit_wait()
                    acks.write(f"t {tid} {seq - 1}")
        except BaseException as exc:  # a poisoned database ends the thread
            failures.append(exc)
            stop.set()

    def mark() -> None:
        m = 0
        try:
            while not stop.is_set():
                m += 1
                markers[(rnd, m)] = list(done)
                seen_marker[0] = m
                time.sleep(0.004)
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    workers = [threading.Thread(target=transfers, args=(t,)) for t in range(threads)]
    workers.append(threading.Thread(target=mark))
    for w in workers:
        w.start()
    stop.wait(float(args.get("seconds", 60)))
    stop.set()
    for w in workers:
        w.join()
    if failures:
        acks.write(f"failed {type(failures[0]).__name__}")
        raise failures[0]
    db.close()
    acks.write("closed")


@dataclass
class TransferState:
    """The transfer tables as stored."""

    balances: dict[int, int]
    log: dict[tuple[int, int, int], list[int]]
    markers: dict[tuple[int, int], list[int]]
    acked: dict[tuple[int, int], int] = field(default_factory=dict)


def read_transfers(db: Any) -> TransferState:
    return TransferState(
        dict(db.table("accounts").items()),
        dict(db.table("log").items()),
        dict(db.table("markers").items()),
    )


def acknowledged(lines: list[str], rnd: int, into: dict[tuple[int, int], int]) -> None:
    """Fold the ``t tid seq`` lines of round ``rnd`` into ``into[(rnd, tid)] = seq``."""
    for line in lines:
        if line.startswith("t "):
            _, tid, seq = line.split()
            key = (rnd, int(tid))
            into[key] = max(into.get(key, -1), int(seq))


def check_transfers(state: TransferState, initialized: bool) -> None:
    """Assert that ``state`` is whole, acknowledged and a prefix of the waves."""
    if not state.balances:
        assert not initialized, "the acknowledged opening balances are gone"
        assert not state.log and not state.markers, "transfers without accounts"
        return
    assert sorted(state.balances) == list(range(ACCOUNTS)), "accounts torn"
    assert sum(state.balances.values()) == ACCOUNTS * INITIAL, "the total changed"
    replay = dict.fromkeys(range(ACCOUNTS), INITIAL)
    per_thread: dict[tuple[int, int], list[int]] = {}
    for (rnd, tid, seq), (x, y, amount, _) in state.log.items():
        replay[x] -= amount
        replay[y] += amount
        per_thread.setdefault((rnd, tid), []).append(seq)
    assert replay == state.balances, "balances are not the sum of the logged transfers"
    for who, seqs in per_thread.items():
        assert seqs == list(range(len(seqs))), f"thread {who} has a gap: not a prefix"
    for (rnd, tid), seq in state.acked.items():
        assert (rnd, tid, seq) in state.log, f"acknowledged transfer {(rnd, tid, seq)} lost"
    per_round: dict[int, list[int]] = {}
    for (rnd, m), finished in state.markers.items():
        per_round.setdefault(rnd, []).append(m)
        for tid, seq in enumerate(finished):
            if seq >= 0:
                assert (rnd, tid, seq) in state.log, (
                    f"marker {(rnd, m)} is present, transfer {(rnd, tid, seq)} before it is not"
                )
    for rnd, ms in per_round.items():
        assert ms == list(range(1, len(ms) + 1)), f"markers of round {rnd} have a gap"
    for (rnd, tid, seq), (_, _, _, marker) in state.log.items():
        if marker:
            assert (rnd, marker) in state.markers, (
                f"transfer {(rnd, tid, seq)} is present, marker {marker} written before it is not"
            )


# -- upgrade and rotation jobs --------------------------------------------------------


@job("open-close")
def job_open_close(args: Mapping[str, Any]) -> None:
    """A writable open (which upgrades a v1 store and finishes recovery), then close."""
    import persist

    acks = Acks(args["acks"])
    opts = _open_args(args)
    del opts["kdf"]
    db = persist.open(args["location"], args["passphrase"], **opts)
    acks.write("open")
    db.close()
    acks.write("closed")


@job("cli")
def job_cli(args: Mapping[str, Any]) -> None:
    """Run the command line in the writer (``persist rekey ...`` and the like)."""
    from ..cli import main

    acks = Acks(args["acks"])
    acks.write("start")
    try:
        main(list(args["argv"]))
    except SystemExit as exc:
        acks.write(f"exit {exc.code}")
        raise
    acks.write("exit 0")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the test process only
    _serve()
