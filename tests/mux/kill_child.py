"""Child of the multiplexer kill test.

THREADS threads each run atomic blocks: block ``s`` of thread ``t`` writes
RELATED keys ``t/s/j`` and sets ``t/last`` to ``s``; after the block it
commit-waits and prints ``t s`` (an acknowledgement).  On start each thread
resumes after its ``t/last``.
"""

import sys
import threading

from persist.kvs import open_store
from persist.mux import Multiplexer, MuxConfig
from persist.testing.wavestore import PlainWaveStore

THREADS = 16
RELATED = 5


def main() -> None:
    store = PlainWaveStore(open_store(sys.argv[1]))
    mux = Multiplexer(store, MuxConfig(max_delay=0.005))
    out = threading.Lock()

    def worker(t: int) -> None:
        last = mux.get("w", b"%02d/last" % t)
        s = int(last) + 1 if last is not None else 0
        while True:
            with mux.atomic():
                for j in range(RELATED):
                    mux.put("w", b"%02d/%08d/%d" % (t, s, j), b"%d" % s)
                mux.put("w", b"%02d/last" % t, b"%d" % s)
            mux.commit_wait()
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
