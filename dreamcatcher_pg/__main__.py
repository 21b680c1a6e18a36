"""``python -m dreamcatcher_pg`` is the ``dreamcatcher`` command."""

import sys

from .cli import main

sys.exit(main())
