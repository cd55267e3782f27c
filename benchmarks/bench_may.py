"""MAY latency per attention: eager vs torch.compile vs onnxruntime, side by side.

    python benchmarks/bench_may.py              # every attention, batch 1 and 8, 320 and 640
    python benchmarks/bench_may.py --quick      # none / eca / mlca, 320, batch 1
    python benchmarks/bench_may.py --backends eager --reps 20

Same options as ``mlca bench`` (this script calls it).
"""

import sys

from mlca.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
