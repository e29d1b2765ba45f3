"""Write the API reference pages: one page per public module of ``platform/emoray``.

Run by the ``gen-files`` plugin on every ``mkdocs build``/``serve``; nothing it writes is
stored in the repository. The walk is over the files that exist at build time, so a module
that is added, moved or removed changes the reference without touching this script.
Modules (and packages) whose name starts with ``_`` are private and skipped, except
``__init__``, which becomes its package's page. ``reference/SUMMARY.md`` is the section's
navigation for the ``literate-nav`` plugin.
"""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "platform"           # the source root (never a package itself)
PACKAGE = SOURCE / "emoray"


def public_modules(package: Path = PACKAGE) -> list[tuple[str, ...]]:
    """Dotted-name parts of every public module under ``package``, sorted.

    A module and a package of the same name (``x.py`` beside ``x/``, as while code moves)
    count once: Python imports the package. Modules in a folder without ``__init__.py``
    (left over from a move) are not part of the package and are skipped.
    """
    found = set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(part.startswith("_") or not part.isidentifier() for part in parts):
            continue        # a private module or package, __main__, __pycache__, a stray file
        if not all((SOURCE.joinpath(*parts[:i]) / "__init__.py").is_file()
                   for i in range(1, len(parts))):
            continue        # in a folder that is not (or no longer) a package
        found.add(parts)
    return sorted(found)


def main() -> None:
    nav = mkdocs_gen_files.Nav()
    for parts in public_modules():
        is_package = (SOURCE.joinpath(*parts) / "__init__.py").is_file()
        doc = Path(*parts, "index.md") if is_package else Path(*parts).with_suffix(".md")
        nav[parts] = doc.as_posix()
        with mkdocs_gen_files.open(Path("reference", doc), "w") as page:
            page.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


main()
