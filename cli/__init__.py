"""The `vitalstream` command line, on top of every other package (`cli.main`)."""
