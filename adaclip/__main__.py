"""``python -m adaclip``: the adaclip command line."""

import sys

from adaclip._cli import main

sys.exit(main())
