"""`python -m mla_export ...` is `mla-export ...`."""

from .ui.cli import main

main(prog_name="mla-export")
