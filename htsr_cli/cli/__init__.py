"""The `htsr` command line: a thin shell over the library API, one module per command."""
