"""The README's "Extending" example runs: a new encoder is one file that registers itself,
and the registry's own checks (tests/unit/test_registries.py) accept it."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- extending-example:start -->\s*```python\n(.*?)```\s*"
                   r"<!-- extending-example:end -->", re.S)

CHECK = textwrap.dedent("""
    import torch
    from emoray.models import create_encoder, encoder_class, encoder_names

    assert "tinyconv" in encoder_names()
    cls = encoder_class("tinyconv")
    for preset in cls.presets:
        enc = create_encoder("tinyconv", preset, **cls.example).eval()
        out = enc(torch.randn(2, *cls.input_shape(**cls.example)))
        assert out.pooled.shape == (2, enc.dim) and out.tokens.shape[2] == enc.dim
        assert torch.isfinite(out.tokens).all()
    print("ok", sorted(cls.presets))
""")


def _example(path: Path) -> str:
    found = BLOCK.search(path.read_text(encoding="utf-8"))
    assert found, f"{path.name}: no extending example between its markers"
    return found.group(1)


def test_the_readme_example_is_the_docs_example():
    assert _example(REPO / "README.md") == _example(REPO / "docs" / "extending.md")


def test_the_readme_example_registers_an_encoder_that_builds_and_runs(tmp_path):
    code = _example(REPO / "README.md")
    assert len([l for l in code.splitlines() if l.strip()]) <= 25     # "a 20-line example"
    script = tmp_path / "extend.py"
    script.write_text(code + "\n" + CHECK, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok ['small', 'tiny']"
