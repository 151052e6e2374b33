"""One error type for every bad input: click prints it as one line and exits 1."""

from __future__ import annotations

import click


class RoadmapError(click.ClickException):
    """A problem with the user's input or workdir, reported as one line (exit status 1)."""

    exit_code = 1

    def show(self, file=None) -> None:  # noqa: D401 - click API
        click.echo(f"roadmap: error: {self.format_message()}", err=True, file=file)
