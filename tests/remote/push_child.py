"""Child of the kill tests: ``python -m tests.remote.push_child SOURCE TARGET [restore|mirror]``.

With ``restore``, restores the replica TARGET into the new location SOURCE instead;
with ``mirror``, mirrors the replica SOURCE to TARGET (no key).

Prints ``go`` once imported and about to push (the parent kills it at a random
moment after that), then ``done`` when the push returned.
"""

from __future__ import annotations

import sys

from persist.remote import mirror, push, restore


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    print("go", flush=True)
    if sys.argv[3:] == ["mirror"]:
        mirror(source, target)
    elif sys.argv[3:] == ["restore"]:
        restore(target, source, passphrase="pw", allow_weak_kdf=True, freshness=False)
    else:
        push(source, target, passphrase="pw", allow_weak_kdf=True, freshness=False)
    print("done", flush=True)


if __name__ == "__main__":
    main()
