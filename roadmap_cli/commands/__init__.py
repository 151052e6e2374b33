"""One module per subcommand, each defining a click command named `cmd` (see roadmap_cli.cli.COMMANDS)."""
