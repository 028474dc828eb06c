"""``python -m recgym.data.sources FILE...``: print the :data:`~recgym.data.sources.pins.PINS` line
(size and SHA-256) of each downloaded raw file; see :mod:`recgym.data.sources.pins`."""

import sys

from recgym.data.sources.pins import main

sys.exit(main())
