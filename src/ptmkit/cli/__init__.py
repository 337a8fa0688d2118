"""`ptm` command line: thin sub-commands that parse arguments and call library functions."""
