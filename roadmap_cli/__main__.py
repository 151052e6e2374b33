"""`python -m roadmap_cli` runs the `roadmap` command (also what torchrun launches)."""

from roadmap_cli.cli import main

if __name__ == "__main__":
    main()
