"""`python -m tq.host`: tq-host."""

import sys

from . import main

sys.exit(main())
