"""Benchmark runner: ``specforge bench`` with the seed's flags, or the decoder-overhead measurement.

    python benchmarks/bench_model_speedup.py --model-path ... --config-list ... --benchmark-list ...
    python benchmarks/bench_model_speedup.py --decoder-overhead [--max-new-tokens 64 --chains 3 7 ...]

The second form records how close the built-in decoder gets to its ideal speed-up with an oracle draft
(see ``specforge.bench.overhead``; figures in BENCHMARKS.md).
"""

import os
import sys

# Run from a checkout without installing: the repository root is the parent of this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--decoder-overhead"]:
        from specforge.bench.overhead import main as overhead_main

        sys.exit(overhead_main(argv[1:]))
    from specforge.cli import main

    sys.exit(main(["bench", *argv]))
