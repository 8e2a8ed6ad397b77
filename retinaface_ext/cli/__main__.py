"""``python -m retinaface_ext.cli``: the retinaface command."""

import sys

from . import main

sys.exit(main())
