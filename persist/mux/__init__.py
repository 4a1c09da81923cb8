"""The transaction multiplexer: commit waves, atomic blocks, commit-wait (DESIGN §2.4).

See the theory of operation in :mod:`persist.mux.multiplexer`.
"""

from .multiplexer import AtomicBlock, Metrics, Multiplexer, MuxConfig
from .wave import (
    Changes,
    Columns,
    CommittedState,
    StaleState,
    Wave,
    WaveState,
    WaveStore,
    merge_columns,
    merge_pending,
)

__all__ = [
    "AtomicBlock",
    "Changes",
    "Columns",
    "CommittedState",
    "Metrics",
    "Multiplexer",
    "MuxConfig",
    "StaleState",
    "Wave",
    "WaveState",
    "WaveStore",
    "merge_columns",
    "merge_pending",
]
