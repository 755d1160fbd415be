"""Old name of `sources.py`, kept only for `estimate.py` (edited on another branch).

Delete this file once estimate.py reads `from .sources import mapping_kind`.
"""

from .sources import mapping_kind as classify

__all__ = ["classify"]
