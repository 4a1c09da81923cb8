"""Test helpers that third-party code may use too.

* :mod:`persist.testing.faults` -- a wrapper store that fails on purpose.
* :mod:`persist.testing.kvs` -- the kvs conformance suite (a pytest mixin) and a
  Hypothesis state machine that checks a backend against the memory oracle.
* :mod:`persist.testing.remote` -- the remote target conformance suite (a
  pytest mixin) for every kind of replica target.

These modules import ``pytest`` and ``hypothesis``: install ``persist[test]``.
"""

from .faults import FaultyStore, InjectedFault

__all__ = ["FaultyStore", "InjectedFault"]
