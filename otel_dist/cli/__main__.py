"""``python -m otel_dist.cli``."""

import sys

from otel_dist.cli import main

sys.exit(main())
