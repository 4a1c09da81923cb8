"""Child processes of the lease tests (real processes, real signals).

``python -m tests.remote.lease_child COMMAND LOCATION LEASE_TIME ...``:

* ``stop-in-fence`` -- acquire, then stop itself with SIGSTOP inside
  ``fenced_write``, after the deadline check and before the target is asked;
  when continued, print ``wrote`` or ``lost``.
* ``loop`` -- acquire, then renew and write fenced rows ``n%06d`` in a loop,
  printing each number once its write returned; print ``lost`` and exit 3
  when the lease is gone.
* ``hold`` -- acquire, print ``acquired``, and sleep (to be killed).
* ``take TIMEOUT`` -- acquire with a timeout; print ``took GENERATION SECONDS``.

:func:`race_worker` is the body of a process racing others at a barrier.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from persist.errors import LeaseHeld, LeaseLost
from persist.remote import acquire, open_container


def race_worker(location: str, index: int, rounds: int, barrier: Any, results: Any) -> None:
    for r in range(rounds):
        with open_container(f"{location}#r{r}") as container:
            barrier.wait(timeout=120)
            try:
                acquire(container, holder=f"p{index}", lease_time=60)
            except LeaseHeld:
                results.put((r, index, False))
            else:
                results.put((r, index, True))


def main() -> None:
    command, location, lease_time = sys.argv[1], sys.argv[2], float(sys.argv[3])
    container = open_container(location)
    if command == "take":
        started = time.monotonic()
        lease = acquire(
            container, holder="taker", lease_time=lease_time, timeout=float(sys.argv[4])
        )
        print("took", lease.generation, time.monotonic() - started, flush=True)
        return
    lease = acquire(container, holder=f"child-{os.getpid()}", lease_time=lease_time)
    print("acquired", flush=True)
    if command == "hold":
        time.sleep(3600)
    elif command == "stop-in-fence":
        lease._fence_hook = lambda: os.kill(os.getpid(), signal.SIGSTOP)
        try:
            lease.fenced_write({b"root": b"child"})
        except LeaseLost:
            print("lost", flush=True)
            sys.exit(3)
        print("wrote", flush=True)
    elif command == "loop":
        for i in range(1_000_000):
            try:
                if lease.remaining() < lease_time / 2:
                    lease.renew()
                lease.fenced_write({b"n%06d" % i: b"x"})
            except LeaseLost:
                try:
                    lease.renew()  # past its deadline? then it may still be its own
                except LeaseLost:
                    print("lost", flush=True)
                    sys.exit(3)
                continue
            print(i, flush=True)
            time.sleep(0.02)  # most stops then land between operations


if __name__ == "__main__":
    main()
