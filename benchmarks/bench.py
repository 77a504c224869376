"""`python benchmarks/bench.py [--quick] [--out FILE.json] [--device cpu|cuda] [--threads N] [--model-dir DIR]`.

The benchmark as a script from a checkout: it puts the repository on `sys.path` (korepl need not be
installed) and runs benchmarks.cli, where the options are described.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)  # import this folder's modules as benchmarks.*, never as top-level names
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
