"""``python -m evpipe.tools.evaluate``."""

import sys

from evpipe.tools.evaluate.cli import main

sys.exit(main())
