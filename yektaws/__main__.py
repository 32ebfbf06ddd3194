"""``python -m yektaws``: the same as the ``yektaws`` command."""

import sys

from yektaws.cli import main

sys.exit(main())
