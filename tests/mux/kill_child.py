"""Child of the multiplexer kill test.

THREADS threads each run atomic blocks: block ``s`` of thread ``t`` writes
RELATED keys ``t/s/j`` and sets ``t/last`` to ``s``; after the block it
commit-waits and prints ``t s`` (an acknowledgement).  On start each thread
resumes after its ``t/last``.

Mode ``plain`` runs the multiplexer over the unencrypted reference store;
mode ``encrypted`` runs the whole stack (``persist.open``: encrypted trees).
"""

import sys
import threading

import persist
from persist.ebs import KdfParams
from persist.kvs import open_store
from persist.mux import Multiplexer, MuxConfig
from persist.testing.wavestore import PlainWaveStore

THREADS = 16
RELATED = 5
PASSPHRASE = "kill test"
OPTS = {"kdf": KdfParams.weak_for_tests(), "allow_weak_kdf": True, "freshness": False}


class TableAccess:
    """The same put/get/atomic surface over a persist table."""

    def __init__(self, db: persist.Database) -> None:
        self.db = db
        self.t = db.table("w")

    def get(self, key: bytes) -> bytes | None:
        return self.t.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.t[key] = value


def main() -> None:
    mode, location = sys.argv[1], sys.argv[2]
    config = MuxConfig(max_delay=0.005)
    if mode == "plain":
        mux = Multiplexer(PlainWaveStore(open_store(location)), config)
        get = lambda k: mux.get("w", k)  # noqa: E731
        put = lambda k, v: mux.put("w", k, v)  # noqa: E731
        atomic, commit_wait = mux.atomic, mux.commit_wait
    else:
        db = persist.open(location, PASSPHRASE, config=config, **OPTS)
        access = TableAccess(db)
        get, put = access.get, access.put
        atomic, commit_wait = db.atomic, db.commit_wait
    out = threading.Lock()

    def worker(t: int) -> None:
        last = get(b"%02d/last" % t)
        s = int(last) + 1 if last is not None else 0
        while True:
            with atomic():
                for j in range(RELATED):
                    put(b"%02d/%08d/%d" % (t, s, j), b"%d" % s)
                put(b"%02d/last" % t, b"%d" % s)
            commit_wait()
            with out:
                print(t, s, flush=True)
            s += 1

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


if __name__ == "__main__":
    main()
