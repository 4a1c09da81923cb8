"""The transaction multiplexer: commit waves, atomic blocks, commit-wait (DESIGN §2.4).

See the theory of operation in :mod:`persist.mux.multiplexer`.
"""

from .multiplexer import AtomicBlock, Metrics, Multiplexer, MuxConfig
from .wave import Changes, Wave, WaveState, WaveStore, merge_pending

__all__ = [
    "AtomicBlock",
    "Changes",
    "Metrics",
    "Multiplexer",
    "MuxConfig",
    "Wave",
    "WaveState",
    "WaveStore",
    "merge_pending",
]
