"""The command line: the `mla-export` group and its commands (`cli`), and the `info` report. The top layer:
it may import every other one, and none imports it."""
