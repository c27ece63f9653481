"""python -m gateway.demo: the same as `tonewall demo`."""

import sys

from gateway.demo import main

sys.exit(main())
