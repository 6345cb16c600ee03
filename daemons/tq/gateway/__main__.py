"""`python -m tq.gateway`: tq-gateway."""

import sys

from . import main

sys.exit(main())
