"""How the process hands freed frame memory back to the system.

glibc's malloc serves a large block with its own mapping, unmapped when it is freed, but only
until the first such block is freed: from then on blocks up to that size (up to 32 MiB) come
from the threads' heaps, and a freed one stays in its heap. A job allocates and frees 4K frames
(12 MiB each, x264's own are 24 to 42 MiB) on a dozen threads, one encoder after another, so
the heaps kept hundreds of MiB that no encoder used any more. With a fixed threshold, every
block of 4 MiB or more is mapped and unmapped on its own: on the 4 s 4K sample, the job peaked
at 1.35 GB (three runs) instead of 1.43 to 1.47 GB with :func:`trim` alone. Smaller blocks, the
720p and 1080p frames the scalers make for each source frame, still come from the heaps, and
are used again there without faulting in fresh pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: Blocks of at least this many bytes get a mapping of their own.
MMAP_THRESHOLD_BYTES = 4 << 20
#: A container's memory limit (cgroup v2); absent outside one, "max" when there is none.
CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
#: ``M_MMAP_THRESHOLD`` in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (musl and others have no such tunables)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@functools.cache
def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold for this process (once); False where it is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
    return done


def trim() -> None:
    """Hand the free memory in every heap back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def usable_memory_bytes() -> int | None:
    """The memory this process can have: the machine's, or its container's limit if lower.

    None where neither can be read.
    """
    sizes = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        sizes.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(ValueError, OSError):
        sizes.append(int(CGROUP_MEMORY_MAX.read_text().strip()))
    positive = [size for size in sizes if size > 0]
    return min(positive) if positive else None
