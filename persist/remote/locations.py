"""Target locations: ``TARGET`` or ``TARGET#name``, and opening them.

``TARGET`` is ``dir:///abs/path`` or any kvs location (a plain path or
``sqlite:///abs/path``, ``leveldb:///abs/dir``, ``memory:NAME``, and every
scheme :func:`persist.kvs.open_store` learns later).  The part after the
*last* ``#`` names a container; a location whose path itself contains ``#``
ends with ``#`` to name the default container (``/a#b/x.db#``).
"""

from __future__ import annotations

import asyncio

from ..kvs import parse_location
from .dirtarget import DirTarget
from .kvstarget import KvsTarget
from .target import Container, Progress, Target, check_container_name

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "acopy_container",
    "acreate_container",
    "adelete_container",
    "alist_containers",
    "aopen_container",
    "aopen_target",
    "copy_container",
    "create_container",
    "delete_container",
    "list_containers",
    "open_container",
    "open_target",
    "split_location",
]

#: How long an operation waits for a store or state log that others hold (seconds).
DEFAULT_LOCK_TIMEOUT = 10.0
_DIR = "dir://"


def split_location(location: str) -> tuple[str, str]:
    """``(target location, container name)``; the name is "" for the default container."""
    if not isinstance(location, str):
        raise TypeError(f"a target location is a str, not {type(location).__name__}")
    target, sep, name = location.rpartition("#")
    if not sep:
        target, name = location, ""
    if not target:
        raise ValueError("empty target location")
    return target, check_container_name(name)


def open_target(
    location: str,
    *,
    create: bool = False,
    read_only: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Target:
    """Open the target at ``location`` (no container name).

    ``create``: make an empty target when there is none (a new directory or
    store).  Raises StoreNotFound when it is missing and not created, NotAStore
    when the location holds something else, ValueError for a malformed one.
    """
    target, name = split_location(location)
    if name:
        raise ValueError(f"{location!r} names a container: use open_container")
    if target.startswith(_DIR):
        path = target[len(_DIR) :]
        return DirTarget(path, create=create, read_only=read_only, lock_timeout=lock_timeout)
    parse_location(target)  # ValueError for an unknown scheme, before anything is made
    return KvsTarget(target, create=create, read_only=read_only, lock_timeout=lock_timeout)


def open_container(
    location: str,
    *,
    create: bool = False,
    read_only: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Container:
    """Open the container ``TARGET#name`` (or ``TARGET``: the default container).

    The handle owns its target: closing it closes the target.  ``create``
    creates the target and the container when missing (never overwriting:
    target contract rule 6); otherwise a missing named container raises
    ContainerNotFound.
    """
    target_location, name = split_location(location)
    target = open_target(
        target_location, create=create, read_only=read_only, lock_timeout=lock_timeout
    )
    try:
        if create and not read_only:
            container = target.create_container(name)
        else:
            container = target.container(name)
            if not container.exists():
                raise container._missing()
    except BaseException:
        target.close()
        raise
    container._owns_target = True
    return container


def create_container(location: str) -> None:
    """Create container ``TARGET#name`` (and its target when missing).

    Raises ContainerExists when it holds rows."""
    open_container(location, create=True).close()


def delete_container(location: str, *, force: bool = False) -> None:
    """Delete container ``TARGET#name`` (Target.delete_container)."""
    target_location, name = split_location(location)
    with open_target(target_location) as target:
        target.delete_container(name, force=force)


def copy_container(source: str, dest: str, *, progress: Progress | None = None) -> int:
    """Copy container ``source`` to ``dest`` (both ``TARGET#name``); return the rows copied.

    The destination target is created when missing (Target.copy_container)."""
    source_target, source_name = split_location(source)
    dest_target, dest_name = split_location(dest)
    if dest_target == source_target:
        with open_target(dest_target) as target:
            return target.copy_container(source_name, target, dest_name, progress=progress)
    with (
        open_target(source_target, read_only=True) as src,
        open_target(dest_target, create=True) as dst,
    ):
        return src.copy_container(source_name, dst, dest_name, progress=progress)


def list_containers(location: str) -> list[str]:
    """The named containers of the target at ``location``, sorted."""
    with open_target(location, read_only=True) as target:
        return target.list_containers()


# -- asyncio twins -------------------------------------------------------------------


async def aopen_target(
    location: str,
    *,
    create: bool = False,
    read_only: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Target:
    return await asyncio.to_thread(
        lambda: open_target(location, create=create, read_only=read_only, lock_timeout=lock_timeout)
    )


async def aopen_container(
    location: str,
    *,
    create: bool = False,
    read_only: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Container:
    return await asyncio.to_thread(
        lambda: open_container(
            location, create=create, read_only=read_only, lock_timeout=lock_timeout
        )
    )


async def acreate_container(location: str) -> None:
    await asyncio.to_thread(create_container, location)


async def adelete_container(location: str, *, force: bool = False) -> None:
    await asyncio.to_thread(lambda: delete_container(location, force=force))


async def acopy_container(source: str, dest: str, *, progress: Progress | None = None) -> int:
    return await asyncio.to_thread(lambda: copy_container(source, dest, progress=progress))


async def alist_containers(location: str) -> list[str]:
    return await asyncio.to_thread(list_containers, location)
