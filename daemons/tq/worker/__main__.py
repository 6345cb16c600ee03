"""`python -m tq.worker`: tq-worker."""

import sys

from . import main

sys.exit(main())
