"""/proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst): one 64-bit little-endian entry per virtual
page of the process, at offset (address / 4096) x 8; bit 63 "present" (the page is in RAM and mapped in the
process's page tables: what smaps counts as Rss), bit 62 "swapped". The present and swapped bits need no
privilege beyond reading the file (ptrace access); the page frame numbers, which are not used, need
CAP_SYS_ADMIN. Pure: the I/O is app.collectors.procfs.ProcFS.pagemap.

Used by the recommendation (issue 22) to count a page read back in the window and resident now once.
"""

from __future__ import annotations

import struct

PAGE = 4096
ENTRY = 8
PRESENT = 1 << 63
WINDOW_PAGES = 512  # one read covers 2 MiB of address space (4 KiB of pagemap)


def present_pages(data: bytes, first_page: int) -> set[int]:
    """The addresses of the present pages among the entries in `data`, which start at virtual page number
    `first_page` (address >> 12). A short read (the end of the address space) gives what it holds."""
    n = len(data) // ENTRY
    out = set()
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", data[: n * ENTRY])):
        if entry & PRESENT:
            out.add((first_page + i) * PAGE)
    return out


def windows(pages: set[int] | list[int], span: int = WINDOW_PAGES) -> list[int]:
    """The first virtual page numbers of the span-page windows that hold the given page addresses, sorted:
    one pagemap read each."""
    return sorted({(a // PAGE) // span * span for a in pages})
