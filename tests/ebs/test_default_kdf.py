"""The one test with the real default Argon2id parameters (t=3, m=256 MiB, p=4)."""

from __future__ import annotations

import pytest

from persist.ebs import EncryptedStore, KdfParams
from persist.errors import WrongPassphrase
from persist.kvs.memory import MemoryStore


def test_create_and_open_with_the_default_kdf() -> None:
    store = MemoryStore()
    EncryptedStore.create(store, "a real passphrase", freshness=False)
    (slot,) = EncryptedStore.open(store, "a real passphrase", freshness=False).keyslots()
    assert slot.kdf == KdfParams.default() and not slot.weak_kdf
    with pytest.raises(WrongPassphrase):
        EncryptedStore.open(store, "another passphrase", freshness=False)
