"""A griffe extension for the API reference: Sphinx roles in docstrings -> code spans.

emoray's docstrings are numpydoc, and numpydoc cross-references are Sphinx roles such as
``:class:`~emoray.errors.ConfigError```. Markdown has no roles, so without this they would
render as ``:class:ConfigError``. Each role becomes a code span of what Sphinx would show:
the last component for ``~a.b.C``, the title for ```title <target>```, else the target.
Loaded by mkdocstrings (``extensions`` in mkdocs.yml); it changes nothing in the code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|exc|obj|const|term|ref):`([^`]+)`")


def _shown(target: str) -> str:
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if titled:
        return titled.group(1)
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target


def convert(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span."""
    return ROLE.sub(lambda m: f"`{_shown(m.group(1))}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring as griffe reads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
