"""Push from a replica to another replica without the key: :func:`mirror`.

Theory of operation (docs/remote.md "Replica to replica, without a key"):

1. Without the key a row is opaque bytes under an opaque storage key.  What
   can be known is which rows exist, their bytes, and the **keyslots**, whose
   storage keys are fixed (``keyslot_key(i)``) and whose rows are stored in
   the clear.  Every other row is immutable in format v2 except the two root
   slots, whose keys derive from the master key: they cannot be told from
   nodes.  So the mirror compares row sets, and orders its writes so that no
   reader of the destination ever sees a root whose rows are missing
   (DESIGN §3 rule 5), whichever rows are the roots.
2. **Reading the source.**  A kvs target's scan is a snapshot.  A dir
   target's is not, but its root switches are state-log transitions (the
   root slots and keyslots are conditional rows there): the state's rows are
   read before and after the scan, and the scan is repeated if they changed
   (a push's plain row writes and garbage deletes do not matter: the rows the
   root reaches are neither).
3. **Which database.**  Keyslot rows carry fresh salts and nonces, so two
   containers that share an identical keyslot row hold the same master key:
   the same database (*same*).  A destination without keyslots is *empty*
   (or holds an interrupted mirror's rows, which its intent row names by a
   hash of the source's keyslots).  Any other destination holds another
   database, or this one before a key rotation: refused (WrongDatabase)
   unless ``replace``.
4. **Order**, *empty* (or replaced): the intent row; every source row the
   destination lacks or holds differently, keyslots excepted, as plain
   batches (the destination opens with none of them: no keyslot of the
   source's key is there yet); then the keyslots in one atomic step (fenced
   by the lease when one is given); then the rows the source lacks are
   deleted; then the intent row.
5. **Order**, *same*: with the same master key the root slots have the same
   storage keys on both sides, so a source root slot the destination lacks
   would publish a root early.  A destination at transaction 1 or later holds
   both of its root slots, so every row it lacks is a node; one at
   transaction 0 holds exactly one row besides its keyslots.  Hence: on a kvs
   destination, every new and changed row goes in ONE atomic batch (a
   transaction); on a dir destination holding at least two rows besides its
   keyslots, the rows it lacks go first as plain batches and the changed
   ones (the root slots, keyslots) in one atomic step; a dir destination
   holding an empty database (transaction 0) is first emptied of it, in one
   atomic step, and then filled as in 4.  Deletes follow, then the intent.

Killed anywhere, the destination opens at its previous root or at the
source's with every row that root reaches (orphans at most), except that a
destination filled as in 4 opens only when the mirror has finished ("no
database" until then); the next mirror completes it.

What a mirror cannot check without the key: that the source is newer than
the destination.  A mirror makes the destination an exact copy of the
source, older or not; the machines that saw the newer state catch the
rollback by their freshness records (``RollbackDetected`` on pull, poll and
restore).  ``persist push`` with the key refuses it before writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..ebs.keyslot import MAX_KEYSLOTS, keyslot_key
from ..errors import StoreLocked, StoreNotFound, WrongDatabase
from ..kvs import display_location
from .dirtarget import DirContainer
from .lease import Lease
from .locations import open_container
from .sync import INTENT_KEY, _check_writer, _delete_rows, _publish, _replica, _write_rows
from .target import Container

__all__ = ["MirrorResult", "amirror", "mirror"]

#: The intent row is the keyed push's (INTENT_KEY): a keyed push that finds
#: it after an interrupted mirror sweeps the replica; its value differs.
MIRROR_INTENT = b"persist mirror intent v1\n"
KEYSLOT_KEYS = frozenset(keyslot_key(i) for i in range(MAX_KEYSLOTS))
#: Times a dir source's scan is repeated while its roots keep switching.
_SCAN_TRIES = 8

Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class MirrorResult:
    """What a mirror did."""

    source: str
    target: str
    written: int
    deleted: int
    #: rows the destination already held, byte for byte
    unchanged: int

    @property
    def up_to_date(self) -> bool:
        return not self.written and not self.deleted


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass


def _rows(container: Container) -> dict[bytes, bytes]:
    with contextlib.closing(container.scan()) as rows:
        return {k: v for k, v in rows if k != INTENT_KEY}


def _state_rows(container: Container) -> object:
    """A dir container's conditional rows (its roots live there); None elsewhere."""
    if not isinstance(container, DirContainer):
        return None
    with container._open(write=False) as cdir:
        return None if cdir is None else dict(cdir.state().rows)


def _source_rows(container: Container) -> dict[bytes, bytes]:
    """One consistent row set of the source (theory rule 2)."""
    for _ in range(_SCAN_TRIES):
        before = _state_rows(container)
        rows = _rows(container)
        if _state_rows(container) == before:
            return rows
    raise StoreLocked(
        f"{display_location(container.location)} switched roots during every scan: "
        "a writer pushes to it without pause; mirror it when it is idle"
    )


def _tag(keyslots: dict[bytes, bytes]) -> bytes:
    digest = hashlib.blake2b(digest_size=16, person=b"persist-mirror")
    for key in sorted(keyslots):
        digest.update(key + keyslots[key])
    return MIRROR_INTENT + digest.digest()


@contextlib.contextmanager
def _source(source: str | Container) -> Iterator[Container]:
    if isinstance(source, Container):
        yield source
        return
    container = open_container(source, read_only=True)
    try:
        yield container
    finally:
        container.close()


def mirror(
    source: str | Container,
    target: str | Container,
    *,
    lease: Lease | None = None,
    replace: bool = False,
    progress: Progress | None = None,
) -> MirrorResult:
    """Make the replica ``target`` an exact copy of the replica ``source``, no key needed.

    Writes only the rows ``target`` lacks or holds differently and deletes
    the ones ``source`` lacks, in an order that keeps ``target`` openable at
    its old state or the new one (module docstring).  Both are target
    locations (``TARGET`` or ``TARGET#name``; ``target`` is created if
    missing) or open containers.  ``lease``: a lease held on ``target``; the
    publishing step and the deletes are fenced by it (LeaseLost).  Without
    one, a target whose lease someone holds is refused (LeaseHeld).
    ``replace``: overwrite a replica of another database (or of this one
    before a key rotation), else WrongDatabase.  Reads both replicas in full
    (O(store) reads), writes O(changes) rows; it does not know which state is
    newer (docs/remote.md).
    """
    report = progress or _no_progress
    with _source(source) as src:
        report("listing the source", 0, None)
        rows = _source_rows(src)
        src_slots = {k: v for k, v in rows.items() if k in KEYSLOT_KEYS}
        if not src_slots:
            raise StoreNotFound(f"{display_location(src.location)} holds no database")
        with (
            _replica(target, create=True, read_only=False) as dest,
            dest._session(),
        ):
            if dest.location == src.location:
                raise ValueError("the source and the target are the same container")
            return _mirror(src.location, rows, src_slots, dest, lease, replace, report)


def _mirror(
    src_location: str,
    rows: dict[bytes, bytes],
    src_slots: dict[bytes, bytes],
    dest: Container,
    lease: Lease | None,
    replace: bool,
    report: Progress,
) -> MirrorResult:
    _check_writer(dest, lease, "mirror")
    report("listing the target", 0, None)
    stored_intent = dest.get(INTENT_KEY)
    have = _rows(dest)
    dest_slots = {k: v for k, v in have.items() if k in KEYSLOT_KEYS}
    intent = _tag(src_slots)
    same = any(src_slots.get(k) == v for k, v in dest_slots.items())
    ours = stored_intent is not None and hmac.compare_digest(stored_intent, intent)
    if not same and (dest_slots or (have and not ours)) and not replace:
        raise WrongDatabase(
            f"{display_location(dest.location)} holds another database (or this one before "
            "a key rotation): replace=True (--replace) overwrites it"
        )
    new = {k: v for k, v in rows.items() if k not in have and k not in KEYSLOT_KEYS}
    changed = {
        k: v
        for k, v in rows.items()
        if k in have and k not in KEYSLOT_KEYS and not hmac.compare_digest(have[k], v)
    }
    slot_puts = {k: v for k, v in src_slots.items() if have.get(k) != v}
    slot_unset = [k for k in dest_slots if k not in src_slots]
    deletes = [k for k in have if k not in rows and k not in KEYSLOT_KEYS]
    unchanged = len(rows) - len(new) - len(changed) - len(slot_puts)
    shown = display_location(src_location), display_location(dest.location)
    if not (new or changed or slot_puts or slot_unset or deletes) and stored_intent is None:
        return MirrorResult(*shown, 0, 0, unchanged)
    if stored_intent is None or not ours:
        dest.write({INTENT_KEY: intent})
    others = sum(1 for k in have if k not in KEYSLOT_KEYS)
    if same and (others <= 1 or (stored_intent is not None and not ours)):
        # Theory rule 5: the destination may lack a root slot (an empty
        # database, or an interrupted push's).  It stops opening first.
        _publish(dest, lease, {}, list(dest_slots))
        same, slot_puts, slot_unset = False, dict(src_slots), []
    if same:  # every row it lacks is a node; the changed ones switch roots
        plain, switch = new, {**changed, **slot_puts}
    else:  # it opens with none of the source's rows until the keyslots land
        plain, switch = {**new, **changed}, slot_puts
    written = _write_rows(dest, plain, report)
    _publish(dest, lease, switch, slot_unset)
    written += len(switch)
    deleted = _delete_rows(dest, lease, deletes, report, "deleting rows")
    dest.delete([INTENT_KEY])
    return MirrorResult(*shown, written, deleted, unchanged)


async def amirror(source: str | Container, target: str | Container, **kwargs: Any) -> MirrorResult:
    """:func:`mirror` in a worker thread: the event loop never blocks."""
    return await asyncio.to_thread(mirror, source, target, **kwargs)
