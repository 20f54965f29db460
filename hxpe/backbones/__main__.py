"""``python -m hxpe.backbones``: see :mod:`hxpe.backbones.build`."""

import sys

from hxpe.backbones.build import main

sys.exit(main())
