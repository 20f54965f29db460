"""The one exception type of data preparation.

Every message names the file, folder or class at fault and says how to fix it, so that a user who
points ``hxpe prepare`` at the wrong folder learns what is wrong without reading code.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset on disk does not match what its builder expects."""
