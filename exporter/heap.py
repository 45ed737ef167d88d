"""Process memory: large freed blocks go back to the system at once, and threads share the heap.

The metrics bodies are a few large ``bytes`` (about 2 MB per family at 10,000 meetings), made
again whenever their lines change. glibc serves such blocks with ``mmap`` only until the first
one is freed: then it raises its threshold to that size, later bodies come from the heap, and
what they leave when freed stays with the process. At 10,000 meetings that was ~25 MB of RSS
(BENCHMARKS.md, issue 26). :func:`return_large_blocks` fixes the thresholds at glibc's
defaults, which also turns their dynamic raising off.

glibc also gives threads that allocate at the same time heaps of their own (up to 8 per core),
each keeping what was freed in it; the exporter's threads (a pool of HTTP workers, the event
loop's) take turns on the GIL anyway, so they are held to :data:`ARENAS` heaps. Both are set
here, in the process, so that ``python -m exporter`` gets them as well as the deploy files'
command lines (``MALLOC_ARENA_MAX`` in the environment would do the same, for those who know).
"""

from __future__ import annotations

import ctypes
from typing import Final

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
LARGE: Final = 128 * 1024  # glibc's default mmap threshold
#: glibc heaps (arenas) the threads of the process share.
ARENAS: Final = 2


def return_large_blocks() -> bool:
    """Keep blocks of :data:`LARGE` bytes or more out of the heap, trim the heap's free top
    above that, and hold the threads to :data:`ARENAS` heaps, for the life of the process (call
    it before starting threads). False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(
        [
            mallopt(_M_MMAP_THRESHOLD, LARGE),
            mallopt(_M_TRIM_THRESHOLD, LARGE),
            mallopt(_M_ARENA_MAX, ARENAS),
        ]
    )
