"""The `tether` command: one module per group of subcommands; :mod:`.main` is the entry."""
