"""Process memory: large freed blocks go back to the system at once.

The metrics bodies are a few large ``bytes`` (about 2 MB per family at 10,000 meetings), made
again whenever their lines change. glibc serves such blocks with ``mmap`` only until the first
one is freed: then it raises its threshold to that size, later bodies come from the heap, and
what they leave when freed stays with the process. At 10,000 meetings that was ~25 MB of RSS
(BENCHMARKS.md, issue 26). :func:`return_large_blocks` fixes the thresholds at glibc's
defaults, which also turns their dynamic raising off.
"""

from __future__ import annotations

import ctypes
from typing import Final

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
LARGE: Final = 128 * 1024  # glibc's default mmap threshold


def return_large_blocks() -> bool:
    """Keep blocks of :data:`LARGE` bytes or more out of the heap, and trim the heap's free top
    above that, for the life of the process. False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE)) and bool(mallopt(_M_TRIM_THRESHOLD, LARGE))
