"""The host-side block-table rules (mla_export/run/block_table.py): the tables a server makes pass; a page id outside
the pool, a row too short for a sequence, a page twice in one row and a page two sequences of different lengths
would both write are each refused with one message naming the sequence, slot and page."""

import numpy as np
import pytest

from mla_export.common.errors import UserError
from mla_export.run.block_table import check_block_table

UNUSED = 2147480000  # slots past a sequence's pages: never checked, never read


def table(rows):
    return np.array(rows, dtype=np.int32)


def test_interleaved_tables_pass():
    # page 16; lengths 0, 17 and 40 before a call of 2 tokens: 1, 2 and 3 pages, interleaved, the rest unused
    check_block_table(table([[5, UNUSED, UNUSED, UNUSED], [2, 7, UNUSED, UNUSED], [0, 3, 6, UNUSED]]),
                      np.array([0, 17, 40]), 2, 16, 9)
    # a full page of a shared prefix (slot 0, 32 and 40 rows: neither sequence writes into it)
    check_block_table(table([[4, 1, 2], [4, 3, 5]]), np.array([32, 40]), 1, 16, 6)


@pytest.mark.parametrize("rows,lens,new,pages,message", [
    ([[0, 9]], [17], 1, 9, "block_table[0, 1] = 9 is outside the pool of 9 pages"),
    ([[0, -1]], [17], 1, 9, "block_table[0, 1] = -1 is outside the pool"),
    ([[0, 1]], [31], 2, 9, "sequence 0 needs 3 pages for 31 + 2 rows of 16, but the block table holds 2"),
    ([[3, 3, UNUSED]], [20], 1, 9, "page 3 appears twice in sequence 0's block table (slots 0 and 1)"),
    ([[1, 2], [1, 4]], [17, 5], 1, 9, "page 1 is used by sequences 0 and 1 (slots 0 and 0, lengths 17 and 5)"),
    ([[1, 2], [4, 2]], [20, 20], 1, 9, "page 2 is used by sequences 0 and 1 (slots 1 and 1, lengths 20 and 20)"),
    ([[1, 2], [2, 4]], [20, 20], 1, 9, "page 2 is used by sequences 0 and 1 (slots 1 and 0"),
    ([[1]], [-1], 1, 9, "cache_seqlens[0] = -1"),
])
def test_bad_tables_are_refused(rows, lens, new, pages, message):
    with pytest.raises(UserError) as caught:
        check_block_table(table(rows), np.array(lens), new, 16, pages)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unused_slots_are_not_read():
    """Slots past a sequence's last needed page may hold anything (contract.py)."""
    check_block_table(table([[0, UNUSED, -7, 12345]]), np.array([15]), 1, 16, 1)
