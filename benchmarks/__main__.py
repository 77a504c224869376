"""`python -m benchmarks ...`: the same as `python benchmarks/bench.py ...`."""

import sys

from benchmarks.cli import main

sys.exit(main())
