"""pyproject.toml installs without setuptools warnings (an SPDX license string, no
deprecated fields): setuptools reads it here exactly as ``pip install -e .`` does."""

from __future__ import annotations

import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_applies_without_setuptools_warnings(monkeypatch):
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    ours = [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught
            if "setuptools" in w.category.__module__ or "setuptools" in w.filename]
    assert not ours, ours
    assert dist.get_name() == "emoray" and dist.metadata.license_expression == "Apache-2.0"
    assert "emoray" in dist.packages and "emoray.data" in dist.packages
