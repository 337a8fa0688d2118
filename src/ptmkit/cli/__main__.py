from ptmkit.cli.main import entry

entry()
