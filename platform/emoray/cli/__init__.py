"""The ``emoray`` command: the front door (:func:`main`), its grammar
(:mod:`emoray.cli.parser`), its handlers (:mod:`emoray.cli.commands`), what it prints
(:mod:`emoray.cli.format`) and the quickstart (:mod:`emoray.cli.quickstart`).

Kept light: importing it imports the grammar only; :func:`main` loads the handlers.
"""

from emoray.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    """Run ``emoray ARGV`` (the console script); returns the exit status."""
    from emoray.cli.commands import run

    return run(argv)


__all__ = ["build_parser", "main"]
