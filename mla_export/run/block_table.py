"""The host-side rules of a contract-2 block table (`contract.py`), checked before a call is made: what validate,
generate and the Polygraphy loader refuse with one message rather than hand a runtime a table it must not follow.

For sequence b with `cache_seqlens[b]` rows before a call of S new tokens, the call touches the slots
j < ceil((cache_seqlens[b] + S) / page) of row b. Among those slots:
- every page id lies in [0, num_pages) (the pool);
- the row holds them (ceil(...) <= max_pages);
- a page appears once in a row, and a page two sequences both touch is a full page of their shared prefix
  (the same slot, below both sequences' lengths: neither writes into it), as prefix caching shares pages.
"""

from __future__ import annotations

import numpy as np

from ..common.errors import UserError


def check_block_table(block_table: np.ndarray, cache_seqlens: np.ndarray, new_tokens: int, page: int,
                      num_pages: int) -> None:
    """Raises UserError (one message naming the sequence, slot and page) when `block_table [B, max_pages]` breaks a
    rule of the module docstring for a call of `new_tokens` tokens over a pool of `num_pages` pages of `page` rows."""
    batch, max_pages = block_table.shape
    owner: dict[int, tuple[int, int]] = {}  # page id -> (sequence, slot) of its first use
    for b in range(batch):
        length = int(cache_seqlens[b])
        if length < 0:
            raise UserError(f"cache_seqlens[{b}] = {length}: a sequence's length cannot be negative")
        needed = -(-(length + new_tokens) // page)
        if needed > max_pages:
            raise UserError(f"sequence {b} needs {needed} pages for {length} + {new_tokens} rows of {page}, but the "
                            f"block table holds {max_pages} per sequence: raise --max-seq-len or shorten the sequence")
        for j in range(needed):
            page_id = int(block_table[b, j])
            if not 0 <= page_id < num_pages:
                raise UserError(f"block_table[{b}, {j}] = {page_id} is outside the pool of {num_pages} pages")
            if page_id not in owner:
                owner[page_id] = (b, j)
                continue
            first, slot = owner[page_id]
            if first == b:
                raise UserError(f"page {page_id} appears twice in sequence {b}'s block table (slots {slot} and {j})")
            shared_prefix = slot == j and (j + 1) * page <= min(length, int(cache_seqlens[first]))
            if not shared_prefix:
                raise UserError(f"page {page_id} is used by sequences {first} and {b} (slots {slot} and {j}, "
                                f"lengths {int(cache_seqlens[first])} and {length}): two sequences may share only "
                                "a full page of a common prefix")
