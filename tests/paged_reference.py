"""Test-side oracles for the contract-2 cache (paged pools, FP8 rows): written from contract.py's text, not from
the kernels.

- `quantize_rows`: the FP8 cache rule transcribed directly in torch: per tile of FP8_CACHE_TILE values,
  scale = 2^ceil(log2(max(amax / 448, FP8_CACHE_MIN_SCALE))), code = e4m3(value / scale) (torch's
  round-to-nearest-even cast). log2 is taken in float64 of the float32 bound, so exact powers of two stay exact.
- `Pool`: a pool [P, page, width] allocated as the middle of a larger buffer with NaN guard pages before and
  after; every page NaN until a sequence's rows are written into it through a shuffled block table whose
  sequences' pages interleave and whose unused slots hold GARBAGE_PAGE (FlashMLA's test value).
- `gather`: a pool read back into the contiguous [B, max_pages * page, width] view the version-1 reference takes.
"""

from __future__ import annotations

import torch

from mla_export.common.contract import FP8_CACHE_MIN_SCALE, FP8_CACHE_TILE, FP8_MAX

GARBAGE_PAGE = 2147480000  # a block-table value no kernel may dereference
GUARD_PAGES = 2
_NAN_CODE = 0x7F  # e4m3 NaN


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., Dc] (any float dtype) -> (codes [..., Dc] float8_e4m3fn, scales [..., ceil(Dc/128)] float32)."""
    d_c = x.shape[-1]
    codes, scales = [], []
    for start in range(0, d_c, FP8_CACHE_TILE):
        tile = x[..., start:start + FP8_CACHE_TILE].float()  # [..., <=128]
        amax = tile.abs().amax(dim=-1)  # [...]
        bound = torch.clamp(amax / FP8_MAX, min=FP8_CACHE_MIN_SCALE)  # float32
        scale = torch.exp2(torch.ceil(torch.log2(bound.double()))).float()  # [...] a power of two
        codes.append((tile / scale[..., None]).to(torch.float8_e4m3fn))
        scales.append(scale)
    return torch.cat(codes, dim=-1), torch.stack(scales, dim=-1)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float(code) * scale, float64 [..., Dc]."""
    per_value = scales.double().repeat_interleave(FP8_CACHE_TILE, dim=-1)[..., :codes.shape[-1]]
    return codes.double() * per_value


def int_view(t: torch.Tensor) -> torch.Tensor:
    """The bits of t (NaN-safe exact comparisons)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


class Pool:
    """The planes of one pool (model: [cache]; FP8: [codes, scales, rope]) inside NaN-guarded buffers."""

    def __init__(self, num_pages: int, page: int, d_c: int, d_r: int, dtype: torch.dtype, fp8: bool,
                 device: str = "cpu"):
        self.page, self.d_c, self.fp8 = page, d_c, fp8
        shape = (GUARD_PAGES + num_pages + GUARD_PAGES, page)
        if fp8:
            self.buffers = [torch.full(shape + (d_c,), _NAN_CODE, dtype=torch.uint8, device=device).view(
                                torch.float8_e4m3fn),
                            torch.full(shape + (-(-d_c // FP8_CACHE_TILE),), float("nan"), device=device),
                            torch.full(shape + (d_r,), float("nan"), dtype=dtype, device=device)]
        else:
            self.buffers = [torch.full(shape + (d_c + d_r,), float("nan"), dtype=dtype, device=device)]
        self.planes = [b[GUARD_PAGES:GUARD_PAGES + num_pages] for b in self.buffers]  # contiguous views

    def write(self, page_id: int, rows: torch.Tensor) -> None:
        """rows [n <= page, Dc+Dr] float: the first n rows of page `page_id` (quantized when FP8)."""
        n = rows.shape[0]
        rows = rows.to(self.buffers[0].device)
        if self.fp8:
            codes, scales = quantize_rows(rows[:, :self.d_c])
            self.planes[0][page_id, :n] = codes
            self.planes[1][page_id, :n] = scales
            self.planes[2][page_id, :n] = rows[:, self.d_c:].to(self.planes[2].dtype)
        else:
            self.planes[0][page_id, :n] = rows.to(self.planes[0].dtype)

    def snapshot(self) -> list[torch.Tensor]:
        return [int_view(b).clone() for b in self.buffers]

    def rows_of_page(self, page_id: int) -> torch.Tensor:
        """[page, Dc+Dr] float64 (dequantized when FP8)."""
        if self.fp8:
            return torch.cat([dequantize_rows(self.planes[0][page_id], self.planes[1][page_id]),
                              self.planes[2][page_id].double()], dim=-1).cpu()
        return self.planes[0][page_id].double().cpu()


def shuffled_table(lens: list[int], new_tokens: int, page: int, max_pages: int, spare: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(block_table [B, max_pages] int32, num_pages): each sequence's needed pages drawn from a random permutation
    of the pool, slot j of every sequence before slot j + 1 of any (so sequences interleave); unused slots
    GARBAGE_PAGE; `spare` pages no sequence owns."""
    needed = [-(-(n + new_tokens) // page) for n in lens]
    num_pages = sum(needed) + spare
    order = iter(torch.randperm(num_pages, generator=generator).tolist())
    table = torch.full((len(lens), max_pages), GARBAGE_PAGE, dtype=torch.int32)
    for j in range(max(needed, default=0)):
        for b, n in enumerate(needed):
            if j < n:
                table[b, j] = next(order)
    return table, num_pages


def gather(pool: Pool, table: torch.Tensor, lens: list[int], new_tokens: int) -> torch.Tensor:
    """The contiguous view [B, max_pages * page, Dc+Dr] float64 of the pool: rows of each sequence's needed
    pages, NaN elsewhere."""
    batch, max_pages = table.shape
    page = pool.page
    width = pool.planes[0].shape[-1] + (pool.planes[2].shape[-1] if pool.fp8 else 0)
    out = torch.full((batch, max_pages * page, width), float("nan"), dtype=torch.float64)
    for b, n in enumerate(lens):
        for j in range(-(-(n + new_tokens) // page)):
            out[b, j * page:(j + 1) * page] = pool.rows_of_page(int(table[b, j]))
    return out


def new_row_places(table: torch.Tensor, lens: list[int], new_tokens: int, page: int) -> list[tuple[int, int, int, int]]:
    """(b, i, page id, row) of every new token's cache row."""
    return [(b, i, int(table[b, (n + i) // page]), (n + i) % page)
            for b, n in enumerate(lens) for i in range(new_tokens)]
