"""One store's key space, divided into containers: Store views over a Store.

A kvs target keeps everything in its one store (docs/remote.md "Kvs targets"):

================================================  ==================================
key                                               what
================================================  ==================================
any key below :data:`RESERVED_PREFIX`             the default container's rows, as a
                                                  plain store holds them
``RESERVED_PREFIX "C" name 0x00``                 marker of named container ``name``
``RESERVED_PREFIX "L" name 0x00``                 lease record of ``name`` ("": default)
``RESERVED_PREFIX "R" name 0x00`` key             row ``key`` of named container ``name``
================================================  ==================================

The reserved prefix is sixteen 0xff bytes and ``persist-remote``: it sorts after
every key that does not start with sixteen 0xff bytes, so the default
container's rows are one contiguous range at the start of the store, and a
32-byte storage key (which looks random) falls into the reserved range with
probability 2**-128.  Container names contain no 0x00 byte, so ``name 0x00``
prefixes never nest.

:class:`NamespaceStore` presents one container as a
:class:`~persist.kvs.base.Store` (STYLE: wrappers implement what they wrap), so
the kvs conformance suite runs through it and the layers above can open a
database inside a container.  Its keys are bounded by ``max_key_size``, which
is :data:`~persist.kvs.base.MAX_KEY_SIZE` minus the prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..kvs.base import MAX_KEY_SIZE, RESERVED_PREFIX, Snapshot, Store

__all__ = [
    "RESERVED_PREFIX",
    "NamespaceStore",
    "container_marker_key",
    "container_rows_prefix",
    "lease_key",
    "marker_range",
]


_MARKER, _LEASE, _ROWS = b"C", b"L", b"R"
#: The value of a named container's marker row.
MARKER_VALUE = b"persist container v1"


def _meta(kind: bytes, name: str) -> bytes:
    return RESERVED_PREFIX + kind + name.encode("ascii") + b"\x00"


def container_marker_key(name: str) -> bytes:
    return _meta(_MARKER, name)


def lease_key(name: str) -> bytes:
    return _meta(_LEASE, name)


def container_rows_prefix(name: str) -> bytes:
    return _meta(_ROWS, name)


def marker_range() -> tuple[bytes, bytes]:
    """The key range holding every container marker."""
    return RESERVED_PREFIX + _MARKER, RESERVED_PREFIX + bytes([_MARKER[0] + 1])


def prefix_end(prefix: bytes) -> bytes | None:
    """The least key above every key that starts with ``prefix`` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class NamespaceStore(Store):
    """The keys ``k`` of ``inner`` with ``prefix + k`` below ``below``, as a Store.

    ``NamespaceStore(inner, container_rows_prefix(name))`` is a named
    container; ``NamespaceStore(inner, b"", below=RESERVED_PREFIX)`` is the
    default container.  A key outside the namespace (too long, or at or above
    ``below``) raises :class:`ValueError`, before anything is written.
    ``owns_inner``: closing the view closes ``inner``.
    """

    def __init__(
        self,
        inner: Store,
        prefix: bytes,
        *,
        below: bytes | None = None,
        owns_inner: bool = True,
    ) -> None:
        super().__init__(inner.location, durable=inner.durable, read_only=inner.read_only)
        self.inner = inner
        self.prefix = prefix
        self.max_key_size = MAX_KEY_SIZE - len(prefix)
        self._below = below
        end = prefix_end(prefix) if prefix else None
        self._end = (prefix + below) if below is not None else end
        self._owns = owns_inner

    def _inner_key(self, key: bytes) -> bytes:
        if len(key) > self.max_key_size:
            raise ValueError(f"a key of this container is at most {self.max_key_size} bytes")
        if self._below is not None and key >= self._below:
            raise ValueError("the key lies in the range reserved for persist.remote")
        return self.prefix + key

    def _inner_range(self, start: bytes, stop: bytes | None) -> tuple[bytes, bytes | None] | None:
        lo = self.prefix + start
        hi = self._end if stop is None else self.prefix + stop
        if self._end is not None and hi is not None:
            hi = min(hi, self._end)
        if hi is not None and hi <= lo:
            return None
        return lo, hi

    def _get(self, key: bytes) -> bytes | None:
        return self.inner.get(self._inner_key(key))

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        bounds = self._inner_range(start, stop)
        if bounds is None:
            return
        cut = len(self.prefix)
        it = self.inner.scan(*bounds)
        try:
            for key, value in it:
                yield key[cut:], value
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _write(self, puts: Iterator[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        dels = [self._inner_key(k) for k in deletes]
        # Lazy, like the puts handed to us: a bad pair raises inside the inner
        # store's batch, which then writes nothing (kvs contract rule 3).
        self.inner.write(((self._inner_key(k), v) for k, v in puts), dels)

    def _compare_and_set(self, key: bytes, expected: bytes | None, new: bytes | None) -> bool:
        return self.inner.compare_and_set(self._inner_key(key), expected, new)

    def _write_if(
        self,
        key: bytes,
        expected: bytes | None,
        puts: Iterator[tuple[bytes, bytes]],
        deletes: list[bytes],
    ) -> bool:
        dels = [self._inner_key(k) for k in deletes]
        mapped = ((self._inner_key(k), v) for k, v in puts)
        return self.inner.write_if(self._inner_key(key), expected, mapped, dels)

    def _snapshot(self) -> Snapshot:
        return _NamespaceSnapshot(self, self.inner.snapshot())

    def _close(self) -> None:
        if self._owns:
            self.inner.close()


class _NamespaceSnapshot(Snapshot):
    def __init__(self, view: NamespaceStore, inner: Snapshot) -> None:
        super().__init__(view)
        self._view = view
        self._inner = inner

    def _get(self, key: bytes) -> bytes | None:
        return self._inner.get(self._view._inner_key(key))

    def _scan(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        bounds = self._view._inner_range(start, stop)
        if bounds is None:
            return
        cut = len(self._view.prefix)
        for key, value in self._inner.scan(*bounds):
            yield key[cut:], value

    def _close(self) -> None:
        self._inner.close()
