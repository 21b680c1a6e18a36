"""``python -m dreamcatcher_pg`` is the ``dreamcatcher`` command."""

import sys

from .entry import main

sys.exit(main())
