"""Content-addressed Merkle B-trees (order 16) with reference-counting GC (DESIGN 2.3).

Pure code over a narrow store interface (:mod:`.nodestore`): reading
(:class:`Tree`), batch updates (:func:`apply_batch`), bulk load
(:func:`bulk_load`), root handles (:func:`retain`, :func:`release`) and the
checker (:func:`check_tree`).  Every write operation returns a
:class:`TreeUpdate` for the caller to commit atomically with the new root.
Theory of operation: docs/design.md, "B-trees and garbage collection".
"""

from __future__ import annotations

from .batch import DELETE, Change, Delete, apply_batch
from .bulk import bulk_load
from .cache import NodeCache, NodeReader
from .check import Problem, ProblemKind, check_tree
from .gc import release, retain
from .memory import MemoryNodeStore
from .node import INLINE_MAX, INTERNAL_MAX, LEAF_MAX, MAX_KEY_SIZE
from .nodestore import NodeId, NodeSource, NodeStore, TreeUpdate
from .overlay import PendingNodeStore
from .tree import Tree

__all__ = [
    "DELETE",
    "INLINE_MAX",
    "INTERNAL_MAX",
    "LEAF_MAX",
    "MAX_KEY_SIZE",
    "Change",
    "Delete",
    "MemoryNodeStore",
    "NodeCache",
    "NodeId",
    "NodeReader",
    "NodeSource",
    "NodeStore",
    "PendingNodeStore",
    "Problem",
    "ProblemKind",
    "Tree",
    "TreeUpdate",
    "apply_batch",
    "bulk_load",
    "check_tree",
    "release",
    "retain",
]
