"""Child process of the push kill test: ``python -m tests.remote.push_child SOURCE TARGET``.

Prints ``go`` once imported and about to push (the parent kills it at a random
moment after that), then ``done`` when the push returned.
"""

from __future__ import annotations

import sys

from persist.remote import push


def main() -> None:
    source, target = sys.argv[1], sys.argv[2]
    print("go", flush=True)
    push(source, target, passphrase="pw", allow_weak_kdf=True, freshness=False)
    print("done", flush=True)


if __name__ == "__main__":
    main()
