"""Push, poll, pull and restore: replicas kept in step with a store (DESIGN §2.6).

Theory of operation (docs/remote.md "Push", "Poll and pull", "Restore"):

1. **Push** pins one committed state of the local store (a live database
   keeps committing meanwhile), reads the replica's root with the same keys,
   and takes the diff from the replica's root to the local one
   (:mod:`persist.remote.reach`): O(changes x depth) rows, never a walk of
   what both share.  Then, in this order (DESIGN §3 rule 5):

   a. an **intent row** (:data:`INTENT_KEY`) says a push is under way;
   b. the missing rows are written (nodes, blobs, chunks, root-log segments);
   c. the **root switch** -- both root slots and the keyslots, in one atomic
      step (a state-log transition on dir targets), fenced by the lease when
      one is held, so a writer that lost its lease publishes nothing;
   d. the rows the new root no longer reaches are deleted, each batch fenced
      by the lease too (a holder that lost it after the switch must not
      delete rows the next holder's root reaches again);
   e. the intent row is deleted.

   Killed anywhere, the replica holds its old root or its new one, with every
   row that root reaches (b before c, c before d): it opens and verifies,
   with orphans at most (the rows of b or d not yet written or deleted).  The
   next push finds the intent row and **sweeps**: it walks everything its
   root reaches, writes what is missing, switches, and deletes every other
   row -- O(store) once, after an interruption.  A push whose replica rows
   fail authentication on the old side sweeps too, so a push repairs a
   damaged replica.
2. **Poll** reads the replica's two root slots only.
3. **Pull** diffs the other way (replica's root -> local one) and writes the
   rows, the root slots and the deletes in ONE atomic batch of the local
   store: a crash leaves the old state or the new one.  It refuses a replica
   older than, or forked from, the local store and this machine's record of
   the replica (``RollbackDetected``, ``ForkDetected``).
4. **Restore** reads everything the replica's root reaches, authenticating
   every row (AEAD, content address, the root log's chain), into a new store;
   the keyslots and roots are written last, so an interrupted restore leaves
   no openable store behind.

**Freshness of replicas.** Besides the local store's record, this machine
keeps one record per replica (the same state directory, keyed by
``replica:`` and the container's canonical location): push, pull and restore
update it, and poll, pull and restore refuse a replica that went back or
forked from it.  A replica's host that puts back an older copy is thereby
caught on every machine that saw the newer one.

Every ``f`` here has an asyncio twin ``af`` that runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..ebs.freshness import FreshnessRecord, check_freshness, resolve_location
from ..ebs.keyslot import MAX_KEYSLOTS, keyslot_key, parse_keyslot, read_keyslots
from ..ebs.root import RootRecord, read_roots
from ..ebs.store import EncryptedStore, choose_root
from ..errors import (
    ForkDetected,
    IntegrityError,
    LeaseHeld,
    LeaseLost,
    RotationUnfinished,
    StoreExists,
    StoreNotFound,
    WrongDatabase,
)
from ..kvs import display_location, open_store
from ..kvs.base import Snapshot
from .dirtarget import DirTarget
from .kvstarget import KvsTarget
from .lease import Lease, read_lease
from .locations import open_container, open_target, split_location
from .reach import Diff, diff_roots, reachable
from .replicastore import ContainerStore
from .target import Container

__all__ = [
    "INTENT_KEY",
    "PollResult",
    "PullResult",
    "PushResult",
    "RestoreResult",
    "apoll",
    "apull",
    "apush",
    "arestore",
    "poll",
    "pull",
    "push",
    "restore",
]

#: The row that says a push is under way (no storage key is this short).
INTENT_KEY = b"\x00persist-push-in-progress"
INTENT_VALUE = b"persist push intent v1\n"
#: Rows per write or delete batch of a push.
BATCH_ROWS = 1024
BATCH_BYTES = 8 * 1024 * 1024

KeyArg = bytes | str | os.PathLike[str]
Freshness = str | os.PathLike[str] | bool | None
#: Called with (phase, rows done, rows in the phase or None).
Progress = Callable[[str, int, int | None], None]


class _HasEbs(Protocol):
    _ebs: EncryptedStore


@dataclass(frozen=True)
class PushResult:
    """What a push did."""

    target: str
    #: the transaction count the replica now holds
    count: int
    #: the one it held before (None: none)
    previous: int | None
    written: int
    deleted: int
    #: whether the push walked the whole store (after an interrupted push)
    swept: bool

    @property
    def up_to_date(self) -> bool:
        return self.previous == self.count and not self.written and not self.deleted


@dataclass(frozen=True)
class PollResult:
    """What a poll saw: the local and the replica's transaction counts."""

    target: str
    local: int
    #: None: the replica holds no database yet
    replica: int | None
    #: whether the replica holds a newer root than the local store
    newer: bool


@dataclass(frozen=True)
class PullResult:
    location: str
    count: int
    previous: int
    written: int
    deleted: int

    @property
    def up_to_date(self) -> bool:
        return self.previous == self.count


@dataclass(frozen=True)
class RestoreResult:
    location: str
    count: int
    rows: int


# -- sources and replicas ----------------------------------------------------------


@contextlib.contextmanager
def _source(
    source: object,
    passphrase: str | None,
    key: KeyArg | None,
    allow_weak_kdf: bool,
    freshness: Freshness,
) -> Iterator[tuple[EncryptedStore, Snapshot]]:
    """The encrypted store and one pinned committed state of it."""
    ebs = getattr(source, "_ebs", source)  # a persist.Database holds its store there
    if isinstance(ebs, EncryptedStore):
        with ebs.pin() as snapshot:
            yield ebs, snapshot
        return
    if not isinstance(source, str | os.PathLike):
        raise TypeError("push a persist.Database, an EncryptedStore or a store location")
    if (passphrase is None) == (key is None):
        raise TypeError("give exactly one of passphrase= and key= to open a store location")
    with open_store(os.fspath(source), read_only=True, create=False) as store:
        opened = EncryptedStore.open(
            store,
            passphrase,
            key=key,
            allow_weak_kdf=allow_weak_kdf,
            freshness=_fresh(freshness),
        )
        try:
            with store.snapshot() as snapshot:
                yield opened, snapshot
        finally:
            opened.close()


def _shown(location: str) -> str:
    return display_location(location)  # never a password in a message


def _fresh(freshness: Freshness) -> str | os.PathLike[str] | Literal[False] | None:
    if freshness is True or freshness is None:
        return None
    if freshness is False:
        return False
    return freshness


def _check_no_rotation(ebs: EncryptedStore) -> None:
    if ebs.rekey_phase is not None:
        raise RotationUnfinished(
            "a master-key rotation of the store is unfinished: finish it first"
        )


def _root_of(ebs: EncryptedStore, get: Callable[[bytes], bytes | None], where: str) -> RootRecord:
    root, _ = choose_root(read_roots(get, ebs.keyring), where)
    return root


@contextlib.contextmanager
def _replica(target: str | Container, *, create: bool, read_only: bool) -> Iterator[Container]:
    if isinstance(target, Container):
        yield target
        return
    if create:
        target_location, name = split_location(target)
        handle = open_target(target_location, create=True)
        try:
            container = handle.container(name)
            if not container.exists():
                container = handle.create_container(name)
        except BaseException:
            handle.close()
            raise
        container._owns_target = True
    else:
        container = open_container(target, read_only=read_only)
    try:
        yield container
    finally:
        container.close()


def replica_identity(container: Container) -> str:
    """The canonical name of a replica: the key of this machine's record of it."""
    target = container.target
    if isinstance(target, DirTarget):
        base = "dir://" + os.path.realpath(target.location[len("dir://") :])
    elif isinstance(target, KvsTarget):
        scheme, rest = target._identity
        base = f"{scheme}://{rest}"
    else:
        base = target.location
    return f"replica:{base}#{container.name}"


def replica_record_path(freshness: Freshness, container: Container) -> Path | None:
    ident = replica_identity(container)
    if freshness is False:
        return None
    if freshness is None or freshness is True:
        return resolve_location(None, ident)
    digest = hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()
    return Path(f"{os.fspath(freshness)}.replica-{digest}.json")


def _save(path: Path | None, root: RootRecord) -> None:
    if path is not None:
        FreshnessRecord.of(root).save(path)


def _replica_roots(
    ebs: EncryptedStore, container: Container
) -> tuple[RootRecord | None, RootRecord | None, bool]:
    """(current root, its predecessor, damaged) of the replica, read with the local keys.

    ``(None, None, False)``: no root at all.  Raises WrongDatabase when the
    replica holds roots that these keys do not open or another database.
    """
    roots = read_roots(container.get, ebs.keyring)
    if all(r is None for r in roots):
        return None, None, False
    valid = [r for r in roots if isinstance(r, RootRecord)]
    if not valid:
        raise WrongDatabase(
            f"{_shown(container.location)} holds a database these keys do not open (another "
            "database, or this one before a key rotation)"
        )
    if any(not hmac.compare_digest(r.db_id, ebs.root.db_id) for r in valid):
        raise WrongDatabase(f"{_shown(container.location)} holds another database")
    try:
        root, previous = choose_root(roots, container.location)
    except IntegrityError:
        return max(valid, key=lambda r: r.count), None, True
    return root, previous, False


def _intent(ebs: EncryptedStore) -> bytes:
    """The intent row's value: names the database (by a keyed hash of its id) so
    that rows of an interrupted first push are told from another database's."""
    tag = hashlib.blake2b(
        ebs.root.db_id, key=ebs.keyring.root_slot_key(0), digest_size=16, person=b"persist-intent"
    )
    return INTENT_VALUE + tag.digest()


def _fixed_rows(
    ebs: EncryptedStore, get: Callable[[bytes], bytes | None]
) -> dict[bytes, bytes | None]:
    """The root slots and keyslots as ``get`` holds them (None: absent)."""
    ring = ebs.keyring
    keys = [ring.root_slot_key(0), ring.root_slot_key(1)]
    keys += [keyslot_key(i) for i in range(MAX_KEYSLOTS)]
    return {k: get(k) for k in keys}


def _batches(
    rows: Iterable[tuple[bytes, bytes]],
) -> Iterator[list[tuple[bytes, bytes]]]:
    batch: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in rows:
        batch.append((key, value))
        size += len(value)
        if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _digest(value: bytes) -> bytes:
    """A short digest of a row's bytes, to compare a replica's rows with the store's."""
    return hashlib.blake2b(value, digest_size=16).digest()


def _check_writer(container: Container, lease: Lease | None, what: str) -> None:
    """Refuse to write ``container`` without its lease while someone holds it, or
    with a lease on another container (``what``: "push", "mirror")."""
    if lease is None:
        record = read_lease(container)
        if record is not None and record.held:
            raise LeaseHeld(
                f"the lease of {_shown(container.location)} is held by {record.holder}: "
                f"{what} with that lease (or release it)",
                record,
            )
    elif lease.container.location != container.location:
        raise ValueError(f"the lease is not on the container the {what} writes to")


def _write_rows(
    container: Container,
    rows: Mapping[bytes, bytes],
    report: Progress,
    lease: Lease | None = None,
) -> int:
    """Write ``rows`` as plain batches in key order (checking ``lease``'s time before
    each, when given); the number written."""
    written = 0
    report("writing rows", 0, len(rows))
    for batch in _batches(sorted(rows.items())):
        _check_lease(lease)
        container.write(batch)
        written += len(batch)
        report("writing rows", written, len(rows))
    return written


def _publish(
    container: Container, lease: Lease | None, puts: dict[bytes, bytes], unset: list[bytes]
) -> None:
    """One atomic step (a root switch), fenced by ``lease`` when one is held."""
    if lease is not None:
        lease.fenced_write(puts, unset)
    else:
        container.write_atomic(puts, unset)


def _delete_rows(
    container: Container, lease: Lease | None, keys: Iterable[bytes], report: Progress, phase: str
) -> int:
    """Delete ``keys`` in batches, each fenced by ``lease`` like a switch (the next
    holder's root may reach them); the number deleted."""
    dels = sorted(keys)
    deleted = 0
    report(phase, 0, len(dels))
    for start in range(0, len(dels), BATCH_ROWS):
        chunk = dels[start : start + BATCH_ROWS]
        if lease is not None:
            lease.fenced_write((), chunk)
        else:
            container.delete(chunk)
        deleted += len(chunk)
        report(phase, deleted, len(dels))
    return deleted


def _check_lease(lease: Lease | None) -> None:
    if lease is not None and lease.remaining() <= 0:
        raise LeaseLost(
            f"the lease of {_shown(lease.container.location)} ran out during the push; "
            "the replica still holds its previous root"
        )


# -- push -------------------------------------------------------------------------


def push(
    source: object,
    target: str | Container,
    *,
    passphrase: str | None = None,
    key: KeyArg | None = None,
    allow_weak_kdf: bool = False,
    freshness: Freshness = None,
    lease: Lease | None = None,
    replace: bool = False,
    sweep: bool = False,
    progress: Progress | None = None,
) -> PushResult:
    """Bring the replica at ``target`` to the committed state of ``source``.

    ``source`` is a :class:`persist.Database` (live: one committed state is
    pinned, writers go on), an :class:`~persist.ebs.EncryptedStore`, or the
    location of a closed store (then give ``passphrase`` or ``key``).
    ``target`` is a target location (``TARGET`` or ``TARGET#name``, created if
    missing) or an open :class:`Container`.  ``lease``: a lease held on the
    container; the root switch is fenced by it (LeaseLost: nothing was
    published).  Without one, a container whose lease someone holds is
    refused (LeaseHeld).  ``replace``: overwrite a replica of another
    database (or of this one before a key rotation), else WrongDatabase.
    ``sweep``: walk the whole store and delete every row it does not reach
    (what a push after an interrupted one does by itself).  A replica newer
    than the source is refused (ForkDetected): pull first.
    """
    report = progress or _no_progress
    with _source(source, passphrase, key, allow_weak_kdf, freshness) as (ebs, snap):
        _check_no_rotation(ebs)
        new_root = _root_of(ebs, snap.get, ebs.kvs.location)
        with (
            _replica(target, create=True, read_only=False) as container,
            container._session(),
        ):
            return _push(ebs, snap, new_root, container, lease, replace, sweep, freshness, report)


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass


def _push(
    ebs: EncryptedStore,
    snap: Snapshot,
    new_root: RootRecord,
    container: Container,
    lease: Lease | None,
    replace: bool,
    sweep: bool,
    freshness: Freshness,
    report: Progress,
) -> PushResult:
    _check_writer(container, lease, "push")
    try:
        old_root, _, damaged = _replica_roots(ebs, container)
    except WrongDatabase:
        if not replace:
            raise
        old_root, damaged = None, True
    if old_root is not None and not damaged:
        if old_root.count > new_root.count:
            raise ForkDetected(
                f"{_shown(container.location)} holds transaction {old_root.count}, newer than the "
                f"store's {new_root.count}: another writer pushed (pull first)"
            )
        if old_root.count == new_root.count and not hmac.compare_digest(
            old_root.digest, new_root.digest
        ):
            raise ForkDetected(
                f"{_shown(container.location)} holds another transaction {old_root.count}: "
                "the replica and the store have forked"
            )
    intent = _intent(ebs)
    stored_intent = container.get(INTENT_KEY)
    interrupted = stored_intent is not None
    # No root these keys open, yet rows: another database's, unless the rows
    # are this database's own first push, interrupted (its intent says so).
    if (
        old_root is None
        and not replace
        and container.holds_rows()
        and (stored_intent is None or not hmac.compare_digest(stored_intent, intent))
    ):
        raise WrongDatabase(
            f"{_shown(container.location)} holds rows of a database these keys do not open "
            "(another database, or this one before a key rotation): replace=True "
            "overwrites it"
        )
    local_fixed = _fixed_rows(ebs, snap.get)
    remote_fixed = _fixed_rows(ebs, container.get)
    previous = None if old_root is None else old_root.count
    same = old_root is not None and hmac.compare_digest(old_root.digest, new_root.digest)
    if same and not interrupted and not sweep and not damaged and local_fixed == remote_fixed:
        _save(replica_record_path(freshness, container), new_root)
        return PushResult(container.location, new_root.count, previous, 0, 0, False)
    full = interrupted or sweep or damaged or (old_root is None and container.holds_rows())
    if not interrupted:
        container.write({INTENT_KEY: intent})
    diff: Diff | None = None
    if not full:
        try:
            diff = diff_roots(ebs, snap.get, new_root, container.get, old_root)
        except IntegrityError:
            full = True  # the replica's old rows fail: repair it by a sweep
    existing: set[bytes] | None = None
    if full or diff is None:
        diff = reachable(ebs, snap.get, new_root)  # the local store's own damage raises
        report("listing the replica", 0, None)
        # A row the replica holds with other bytes (flipped by its host, or an
        # older encryption of the same node) is written again: a sweep repairs.
        with contextlib.closing(container.scan()) as rows:
            held = {k: _digest(v) for k, v in rows}
        existing = set(held)
        puts = {k: v for k, v in diff.puts.items() if held.get(k) != _digest(v)}
        keep = set(diff.puts) | set(local_fixed) | {INTENT_KEY}
        deletes = existing - keep
    else:
        puts, deletes = diff.puts, diff.deletes
    written = _write_rows(container, puts, report, lease)
    switch = {k: v for k, v in local_fixed.items() if v is not None and remote_fixed.get(k) != v}
    unset = [k for k, v in local_fixed.items() if v is None and remote_fixed.get(k) is not None]
    _publish(container, lease, switch, unset)
    written += len(switch)
    deleted = _delete_rows(container, lease, deletes, report, "deleting garbage")
    container.delete([INTENT_KEY])
    _save(replica_record_path(freshness, container), new_root)
    return PushResult(container.location, new_root.count, previous, written, deleted, full)


# -- poll -------------------------------------------------------------------------


def poll(
    source: object,
    target: str | Container,
    *,
    passphrase: str | None = None,
    key: KeyArg | None = None,
    allow_weak_kdf: bool = False,
    freshness: Freshness = None,
) -> PollResult:
    """Whether the replica at ``target`` holds a newer root than ``source``.

    Reads the replica's two root slots and nothing else.  Raises
    RollbackDetected or ForkDetected when the replica went back from, or
    forked from, what this machine saw of it; WrongDatabase when it holds
    another database.
    """
    with _source(source, passphrase, key, allow_weak_kdf, freshness) as (ebs, snap):
        local = _root_of(ebs, snap.get, ebs.kvs.location)
        with _replica(target, create=False, read_only=True) as container:
            root, previous, damaged = _replica_roots(ebs, container)
            if root is None:
                return PollResult(container.location, local.count, None, False)
            if damaged:
                raise IntegrityError(f"the root slots of {_shown(container.location)} are damaged")
            path = replica_record_path(freshness, container)
            check_freshness(FreshnessRecord.load(path) if path else None, root, previous)
            if root.count == local.count and not hmac.compare_digest(root.digest, local.digest):
                raise ForkDetected(
                    f"{_shown(container.location)} holds another transaction {root.count} "
                    "than the store"
                )
            return PollResult(container.location, local.count, root.count, root.count > local.count)


# -- pull -------------------------------------------------------------------------


def pull(
    location: str | os.PathLike[str],
    target: str | Container,
    *,
    passphrase: str | None = None,
    key: KeyArg | None = None,
    allow_weak_kdf: bool = False,
    freshness: Freshness = None,
    progress: Progress | None = None,
) -> PullResult:
    """Bring the closed local store at ``location`` to the replica's newer root.

    Fetches only the rows the local store lacks, authenticating each, and
    writes them with the new root slots and the deletes in one atomic batch.
    Raises RollbackDetected when the replica is older than the local store
    (or than this machine's record of the replica), ForkDetected when it
    diverged, WrongDatabase when it holds another database.  The local
    keyslots are kept: a pull changes data, not passphrases.
    """
    report = progress or _no_progress
    path = os.fspath(location)
    with open_store(path, create=False) as store:
        ebs = EncryptedStore.open(
            store, passphrase, key=key, allow_weak_kdf=allow_weak_kdf, freshness=_fresh(freshness)
        )
        try:
            _check_no_rotation(ebs)
            local = ebs.root
            with (
                _replica(target, create=False, read_only=True) as container,
                container._session(),
            ):
                root, previous, damaged = _replica_roots(ebs, container)
                if root is None:
                    raise StoreNotFound(f"{_shown(container.location)} holds no database")
                if damaged:
                    raise IntegrityError(
                        f"the root slots of {_shown(container.location)} are damaged"
                    )
                rpath = replica_record_path(freshness, container)
                check_freshness(FreshnessRecord.load(rpath) if rpath else None, root, previous)
                check_freshness(FreshnessRecord.of(local), root, previous)
                if hmac.compare_digest(root.digest, local.digest):
                    _save(rpath, root)
                    return PullResult(path, local.count, local.count, 0, 0)
                with store.snapshot() as snap:
                    report("fetching rows", 0, None)
                    diff = diff_roots(ebs, container.get, root, snap.get, local)
                ring = ebs.keyring
                slots = [ring.root_slot_key(0), ring.root_slot_key(1)]
                fixed = {k: container.get(k) for k in slots}
        finally:
            ebs.close()
        # The diff's rows were authenticated; the root slots open with these keys
        # (read_roots above), and choose_root proved them one history.
        puts = dict(diff.puts)
        puts.update({k: v for k, v in fixed.items() if v is not None})
        dels = [k for k, v in fixed.items() if v is None] + sorted(diff.deletes)
        report("writing rows", 0, len(puts))
        store.write(puts, dels)
        report("writing rows", len(puts), len(puts))
        _save(resolve_location(_fresh(freshness), store.canonical_location, store.location), root)
        _save(rpath, root)
        return PullResult(path, root.count, local.count, len(puts), len(dels))


# -- restore ----------------------------------------------------------------------


def restore(
    target: str | Container,
    location: str | os.PathLike[str],
    *,
    passphrase: str | None = None,
    key: KeyArg | None = None,
    allow_weak_kdf: bool = False,
    freshness: Freshness = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Rebuild a local store at ``location`` from the replica at ``target``.

    Every row is authenticated on the way in; the store at ``location`` must
    be empty or missing (StoreExists) unless ``overwrite``, which replaces
    whatever it holds.  Raises IntegrityError for a damaged replica (nothing
    openable is left at ``location``), RollbackDetected or ForkDetected when
    the replica went back from what this machine saw of it or of the store at
    ``location``.
    """
    report = progress or _no_progress
    path = os.fspath(location)
    with (
        _replica(target, create=False, read_only=True) as container,
        ContainerStore(container) as rstore,
    ):
        if not container.exists():
            raise StoreNotFound(f"no container {_shown(container.location)}")
        rpath = replica_record_path(freshness, container)
        ebs = EncryptedStore.open(
            rstore,
            passphrase,
            key=key,
            allow_weak_kdf=allow_weak_kdf,
            freshness=rpath if rpath is not None else False,
        )
        try:
            _check_no_rotation(ebs)
            root = ebs.root
            report("reading the replica", 0, None)
            full = reachable(ebs, rstore.get, root)
            fixed = _fixed_rows(ebs, rstore.get)
        finally:
            ebs.close()
    slots = read_keyslots(lambda k: fixed.get(k))
    for index, row in slots.items():
        parse_keyslot(index, row)  # IntegrityError for a malformed one
    with open_store(path, create=True) as dest:
        existing = [k for k, _ in dest.scan(b"\x00")]
        if existing and not overwrite:
            raise StoreExists(f"{_shown(path)} already holds a store (overwrite=True replaces it)")
        lpath = resolve_location(_fresh(freshness), dest.canonical_location, dest.location)
        if lpath is not None and not overwrite:
            check_freshness(FreshnessRecord.load(lpath), root)
        stale = set(existing) - set(full.puts) - set(fixed)
        if existing:
            # The old store stops opening first, so a crash leaves nothing half-restored.
            dest.write(deletes=[k for k in fixed if k in set(existing)])
        written = 0
        report("writing rows", 0, len(full.puts))
        for batch in _batches(sorted(full.puts.items())):
            dest.write(batch)
            written += len(batch)
            report("writing rows", written, len(full.puts))
        dest.write({k: v for k, v in fixed.items() if v is not None}, sorted(stale))
        _save(lpath, root)
    return RestoreResult(path, root.count, written + sum(v is not None for v in fixed.values()))


# -- asyncio ------------------------------------------------------------------------


async def apush(source: object, target: str | Container, **kwargs: Any) -> PushResult:
    """:func:`push` in a worker thread: the event loop never blocks."""
    return await asyncio.to_thread(push, source, target, **kwargs)


async def apoll(source: object, target: str | Container, **kwargs: Any) -> PollResult:
    """:func:`poll` in a worker thread."""
    return await asyncio.to_thread(poll, source, target, **kwargs)


async def apull(
    location: str | os.PathLike[str], target: str | Container, **kwargs: Any
) -> PullResult:
    """:func:`pull` in a worker thread."""
    return await asyncio.to_thread(pull, location, target, **kwargs)


async def arestore(
    target: str | Container, location: str | os.PathLike[str], **kwargs: Any
) -> RestoreResult:
    """:func:`restore` in a worker thread."""
    return await asyncio.to_thread(restore, target, location, **kwargs)
