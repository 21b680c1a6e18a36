"""``python -m bench.reliability``: every scenario, one table, one JSON line."""

import sys

from .run import main

sys.exit(main())
