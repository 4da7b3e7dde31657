"""Long fuzzing run of the capture readers on mutated corpus files (beyond the test suite's budget).

Usage::

    NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=/tmp/hc-numba-bc PYTHONPATH=src \\
        python bench/fuzz_capture.py [--seed 1] [--runs 20000] [EXTRA_FILES...]

Each run takes a file from ``../shared/corpus/tcpdump-tests`` (or the extra files), overwrites
1-20 random bytes, sometimes cuts it, and reads it with a random window size. Only
``InputError`` may come out; with ``NUMBA_BOUNDSCHECK=1`` (and a fresh cache directory, so that
the kernels are compiled with bounds checks) an out-of-bounds read raises instead of going
unnoticed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

from halfclose.capture import open_captures
from halfclose.errors import InputError

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "tcpdump-tests"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fuzz the capture readers")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20_000)
    ap.add_argument("extra", nargs="*", type=Path)
    a = ap.parse_args(argv)
    rnd = random.Random(a.seed)
    files = (sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []) + list(a.extra)
    if not files:
        print(f"no input files (corpus not found at {CORPUS})", file=sys.stderr)
        return 2
    read = refused = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutant.cap"
        for _ in range(a.runs):
            data = bytearray(rnd.choice(files).read_bytes()[:200_000])
            for _ in range(rnd.randint(1, 20)):
                if data:
                    data[rnd.randrange(len(data))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                data = data[: rnd.randrange(len(data) + 1)]
            path.write_bytes(bytes(data))
            try:
                with open_captures([path], window_bytes=rnd.choice([4096, 65536, 1 << 25])) as reader:
                    for batch in reader:
                        if len(batch):
                            ends = batch.payload_off.astype(np.int64) + batch.payload_caplen
                            assert int(ends.max()) <= batch.data.shape[0]
                read += 1
            except InputError:
                refused += 1
    print(f"{a.runs} mutants: {read} read, {refused} refused with InputError, no other exception")
    return 0


if __name__ == "__main__":
    sys.exit(main())
