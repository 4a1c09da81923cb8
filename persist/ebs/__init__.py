"""The encrypted byte store (DESIGN §2.2): every row encrypted on its own.

Byte layouts are in docs/format.md; the threat model in docs/security.md.
"""

from __future__ import annotations

from .freshness import FreshnessRecord
from .kdf import KdfParams
from .keys import NodeId
from .keyslot import KeySlotInfo
from .layout import RowKind
from .rekey import RekeyTarget, TreeRekeyer
from .root import Coverage, RootRecord
from .store import EncryptedStore
from .table import Table, WriteBatch
from .verify import Problem
from .xaes import XAES256GCM, xaes_decrypt, xaes_encrypt

__all__ = [
    "XAES256GCM",
    "Coverage",
    "EncryptedStore",
    "FreshnessRecord",
    "KdfParams",
    "KeySlotInfo",
    "NodeId",
    "Problem",
    "RekeyTarget",
    "RootRecord",
    "RowKind",
    "Table",
    "TreeRekeyer",
    "WriteBatch",
    "xaes_decrypt",
    "xaes_encrypt",
]
