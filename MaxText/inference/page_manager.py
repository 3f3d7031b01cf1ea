"""Host-side bookkeeping for the paged KV cache: the free-page list and each request's page table.

Pages are reserved for a request's whole budget (prompt + max new tokens) when it is admitted, so a running
request can never run out of pages mid-decode: a pool that is too full refuses the *admission* (OutOfPages,
or `can_allocate` false for the scheduler to wait), and nothing already running is ever corrupted. Page 0
is the null page (kernels/paged.py) and is never handed out.
"""

import numpy as np

from MaxText.kernels.paged import NULL_PAGE


class OutOfPages(RuntimeError):
    """The pool has too few free pages for a request; release some (finish requests) and retry."""


class PageManager:
    """num_pages pages (page 0 reserved) of page_size slots; each request's table is max_pages wide."""

    def __init__(self, num_pages: int, page_size: int, max_pages_per_request: int):
        if num_pages < 2:
            raise ValueError(f"num_pages={num_pages}: expected >= 2 (page 0 is the reserved null page)")
        self.num_pages, self.page_size, self.max_pages = num_pages, page_size, max_pages_per_request
        self._free = list(range(num_pages - 1, NULL_PAGE, -1))  # pop() hands out low pages first
        self._owned = {}  # request id -> list of pages

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.pages_for(num_tokens) <= min(self.free_pages, self.max_pages)

    def allocate(self, request_id, num_tokens: int) -> np.ndarray:
        """Reserves pages for num_tokens slots; returns the request's table row [max_pages] int32."""
        if request_id in self._owned:
            raise ValueError(f"request {request_id!r} already holds pages; release it first")
        need = self.pages_for(num_tokens)
        if need > self.max_pages:
            raise OutOfPages(
                f"request {request_id!r} needs {need} pages for {num_tokens} tokens but a request may hold "
                f"at most {self.max_pages} ({self.max_pages * self.page_size} tokens)"
            )
        if need > self.free_pages:
            raise OutOfPages(
                f"request {request_id!r} needs {need} pages for {num_tokens} tokens; only {self.free_pages} "
                f"of {self.num_pages - 1} are free"
            )
        self._owned[request_id] = [self._free.pop() for _ in range(need)]
        return self.table_row(request_id)

    def table_row(self, request_id) -> np.ndarray:
        row = np.full((self.max_pages,), NULL_PAGE, np.int32)
        pages = self._owned[request_id]
        row[: len(pages)] = pages
        return row

    def release(self, request_id) -> None:
        """Returns the request's pages to the free list (a no-op for unknown ids)."""
        self._free.extend(reversed(self._owned.pop(request_id, [])))
