"""Classification metrics computed inside worker loops (torch, no Ray)."""

from __future__ import annotations

import torch


def macro_f1(conf: torch.Tensor) -> float:
    """Macro-F1 of a confusion matrix ``(true, pred)``, averaged over the classes that
    occur as a true or a predicted label (sklearn's ``f1_score(average="macro")``)."""
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    used = (support + predicted) > 0
    if not used.any():
        return 0.0
    f1 = 2 * tp / (support + predicted).clamp_min(1e-12)
    return float(f1[used].mean())


def confusion(y: torch.Tensor, pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` float64 counts of (true, predicted)."""
    conf = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=y.device)
    conf.index_put_((y.long(), pred.long()), torch.ones_like(y, dtype=torch.float64),
                    accumulate=True)
    return conf
