"""Where and how results are printed: the rich console for tables and prose on stdout, the table style,
and the number formats the tables share.

On a terminal the console is as wide as the terminal; piped or redirected it is 80 columns (or $COLUMNS)
without colour, so logs and pipes read the same everywhere. Every table is laid out to fit 80 columns;
a cell that still does not fit (a terminal narrower than 80) folds onto the next line, never cut with
an ellipsis: a number is always printed whole.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap

PIPED_WIDTH = 80  # columns of output that is not a terminal, unless $COLUMNS says otherwise
PROSE_WIDTH = 80  # sentences wrap here even on a wider terminal


def make_console(stderr: bool = False):
    """A rich Console on stdout (or stderr): the terminal's width on a terminal, else $COLUMNS or 80."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not stream.isatty():
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH
    return Console(file=stream, width=width, highlight=False)


def table(title: str | None = None, caption: str | None = None, show_header: bool = True):
    """The table style of every command: a rule under the header, no box, two spaces between columns (a
    boxed table spends three or more), left-aligned title."""
    from rich import box
    from rich.table import Table

    return Table(title=title, caption=caption, show_header=show_header, box=box.SIMPLE_HEAD, padding=(0, 1),
                 collapse_padding=True, pad_edge=False, title_justify="left", caption_justify="left",
                 show_edge=False)


def add_columns(t, *names: str, numbers_from: int = 1) -> None:
    """Columns `names`: the first `numbers_from` are labels (left-aligned), the rest numbers (right-aligned).
    Layouts are chosen so that cells fit whole at 80 columns; a label wraps between words where its column
    is narrowed, and any cell that still does not fit (a narrower terminal) folds onto the next line:
    never cropped, never cut with an ellipsis (rich crops cells of `no_wrap` columns, so none is)."""
    for i, name in enumerate(names):
        t.add_column(name, justify="left" if i < numbers_from else "right", overflow="fold")


def prose(text: str, console=None) -> str:
    """`text` wrapped at PROSE_WIDTH columns (or the console's width, if narrower)."""
    width = min(PROSE_WIDTH, console.width) if console is not None else PROSE_WIDTH
    return textwrap.fill(" ".join(text.split()), width=width, break_long_words=False, break_on_hyphens=False)


def size_text(nbytes: float, unit_of: float | None = None) -> str:
    """Bytes in binary units: 512 B, 36.0 KiB, 1,141.0 MiB, 3.59 GiB; in the unit `unit_of` would get, if given
    (so that sizes side by side compare at a glance)."""
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if (nbytes if unit_of is None else unit_of) >= scale:
            return f"{nbytes / scale:,.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{nbytes:,.0f} B"


def sci(value: float, digits: int = 2) -> str:
    """A small or large quantity in scientific notation with `digits` after the point: 1.23e-05; 0 as 0."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}e}"


def sig(value: float, digits: int = 4) -> str:
    """`value` with at least `digits` significant digits in plain notation and thousands separators:
    0.01234, 1.234, 123.4, 12,346."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


def ratio(value: float) -> str:
    """A ratio such as err/tol: two significant digits, plain between 1e-4 and 1000 (0.0034, 0.86, 12, 230),
    else scientific (8.6e-06, 1.2e+30)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if 1e-4 <= abs(value) < 1000:
        return sig(value, 2).replace(",", "")
    return f"{value:.1e}"
