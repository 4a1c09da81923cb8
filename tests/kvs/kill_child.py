"""Child of the kill test: writes numbered batches and reports each acknowledged one.

Batch i puts ``b/%08d/%03d`` for j in range(BATCH) and rewrites the shared keys
``s/%03d`` to the value ``i``, then prints ``i`` once ``write`` has returned.
"""

import sys

from persist.kvs import open_store

BATCH = 50
SHARED = 20


def main() -> None:
    location, start = sys.argv[1], int(sys.argv[2])
    store = open_store(location)
    i = start
    while True:
        val = b"%08d" % i
        puts = {b"b/%08d/%03d" % (i, j): val * 8 for j in range(BATCH)}
        puts.update({b"s/%03d" % j: val for j in range(SHARED)})
        store.write(puts, deletes=[b"b/%08d/%03d" % (i - 3, 0)] if i >= 3 else [])
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    main()
