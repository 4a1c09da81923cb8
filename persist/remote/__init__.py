"""Replicas on storage nobody trusts (DESIGN §2.6; docs/remote.md).

Part 1, the half that does not depend on the tree format:

* **targets** and **containers** -- :func:`open_target`, :func:`open_container`
  and the contract they keep (:mod:`persist.remote.target`): a kvs location or
  ``dir:///abs/path``, optionally naming a container (``TARGET#name``);
* **containers** by location -- :func:`create_container`,
  :func:`delete_container`, :func:`copy_container`, :func:`list_containers`;
* the single-writer **lease** -- :func:`acquire`, :class:`Lease` (renew,
  release, and :meth:`Lease.fenced_write`, the fencing primitive a push's root
  switch uses), :func:`read_lease`, :func:`renew_lease`, :func:`release_lease`.

Every blocking call ``f`` has an asyncio twin ``af`` that never blocks the
event loop (``aacquire``, ``acopy_container``, ``Container.aget`` ...).

Part 2 keeps replicas in step (:mod:`persist.remote.sync`): :func:`push`,
:func:`poll`, :func:`pull`, :func:`restore` and their twins; :func:`mirror`
(:mod:`persist.remote.mirroring`) pushes a replica to another one without the key.
"""

from .lease import (
    DEFAULT_LEASE_TIME,
    Contender,
    Lease,
    aacquire,
    acquire,
    aread_lease,
    arelease_lease,
    arenew_lease,
    default_holder,
    read_lease,
    release_lease,
    renew_lease,
)
from .leaserecord import LeaseRecord
from .locations import (
    DEFAULT_LOCK_TIMEOUT,
    acopy_container,
    acreate_container,
    adelete_container,
    alist_containers,
    aopen_container,
    aopen_target,
    copy_container,
    create_container,
    delete_container,
    list_containers,
    open_container,
    open_target,
    split_location,
)
from .mirroring import MirrorResult, amirror, mirror
from .replicastore import ContainerStore
from .sync import (
    PollResult,
    PullResult,
    PushResult,
    RestoreResult,
    apoll,
    apull,
    apush,
    arestore,
    poll,
    pull,
    push,
    restore,
)
from .target import (
    DEFAULT_CONTAINER,
    MAX_ROW_KEY_SIZE,
    MAX_ROW_SIZE,
    Container,
    Target,
    check_container_name,
)

__all__ = [
    "DEFAULT_CONTAINER",
    "DEFAULT_LEASE_TIME",
    "DEFAULT_LOCK_TIMEOUT",
    "MAX_ROW_KEY_SIZE",
    "MAX_ROW_SIZE",
    "Container",
    "ContainerStore",
    "Contender",
    "Lease",
    "LeaseRecord",
    "MirrorResult",
    "PollResult",
    "PullResult",
    "PushResult",
    "RestoreResult",
    "Target",
    "aacquire",
    "acopy_container",
    "acquire",
    "acreate_container",
    "adelete_container",
    "alist_containers",
    "amirror",
    "aopen_container",
    "aopen_target",
    "apoll",
    "apull",
    "apush",
    "aread_lease",
    "arelease_lease",
    "arenew_lease",
    "arestore",
    "check_container_name",
    "copy_container",
    "create_container",
    "default_holder",
    "delete_container",
    "list_containers",
    "mirror",
    "open_container",
    "open_target",
    "poll",
    "pull",
    "push",
    "read_lease",
    "release_lease",
    "renew_lease",
    "restore",
    "split_location",
]
