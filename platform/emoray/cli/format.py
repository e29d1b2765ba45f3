"""What the commands print for a person: a prediction, a synthetic corpus's summary."""

from __future__ import annotations

from typing import Any


def format_prediction(answer: dict[str, Any]) -> str:
    """A few lines for a person: label, probabilities, per modality, incongruence."""
    probs = answer.get("probabilities") or {}
    lines = [f"{answer.get('label')}  (" + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])) + ")"]
    if answer.get("valence") is not None:
        lines.append(f"valence {answer['valence']:+.2f}  arousal {answer['arousal']:+.2f}")
    mass = answer.get("attention_mass") or {}
    for m, own in (answer.get("per_modality") or {}).items():
        extra = f"  attention {mass[m]:.2f}" if m in mass else ""
        lines.append(f"  {m:<7} {own['label']}{extra}")
    conflict = answer.get("incongruence")
    if conflict:
        state = "INCONGRUENT" if conflict["flag"] else "congruent"
        shown = " + ".join(conflict.get("expressed_by") or ["speech"])
        lines.append(f"expressed ({shown}) vs EEG: {state} (JS divergence "
                     f"{conflict['score']:.2f}, threshold {conflict['threshold']:.2f})")
    if answer.get("ignored"):
        lines.append(f"ignored (no encoder in this model): {answer['ignored']}")
    lines.append(f"model {answer.get('stage')} {answer.get('model_version')}, "
                 f"{answer.get('n_segments')} segment(s)")
    return "\n".join(lines)


def format_window(answer: dict[str, Any]) -> str:
    """One line per live-stream window: its span, the label, each modality's own label."""
    probs = answer.get("probabilities") or {}
    top = max(probs.values()) if probs else float("nan")
    own = ", ".join(f"{m} {a['label']}" for m, a in (answer.get("per_modality") or {}).items())
    latency = f"  {answer['latency_ms']:.0f} ms" if "latency_ms" in answer else ""
    flag = "  INCONGRUENT" if (answer.get("incongruence") or {}).get("flag") else ""
    return (f"[{answer['start_s']:7.1f} - {answer['end_s']:7.1f} s] {answer['label']:<10} "
            f"{top:.2f}  ({own}){flag}{latency}")


def format_synth(summary: dict, out: str) -> str:
    parts = [f"synth: wrote {out}"]
    for key in ("layout", "mode", "subjects", "trials", "files"):
        if key in summary:
            parts.append(f"{key}={summary[key]}")
    return " ".join(str(p) for p in parts)
