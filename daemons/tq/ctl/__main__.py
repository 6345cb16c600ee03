"""`python -m tq.ctl`: tqctl."""

import sys

from . import main

sys.exit(main())
