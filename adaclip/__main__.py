"""``python -m adaclip``: the command line, [`adaclip.tuning.main`][adaclip.tuning.main]."""

import sys

from adaclip.tuning import main

sys.exit(main())
