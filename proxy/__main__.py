"""``python -m proxy``: the same as the ``resproxy`` command."""

import sys

from proxy.cli import main

sys.exit(main())
