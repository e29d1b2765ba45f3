"""How fast do the encoders train? ``python benchmarks/models.py [--quick]`` (or
``emoray bench models``).

For every published encoder (``eegformer``, ``ast``, ``vit``), the hand-feature encoders
(``bandpower-mlp``, ``speechstats``) and braindecode's EEGNet, ShallowFBCSPNet and
EEGConformer, at each preset (``--quick``: tiny only) and at the default contract (EEG
30 x 500 at 100 Hz, log-mel 128 x 501, 25 frames of 224 x 224, as ``emoray models``
builds them): training throughput in samples per second (forward + backward + an AdamW
step on a batch; bf16 autocast on CUDA), the FLOPs of one sample's forward pass (torch's
flop counter, via :mod:`emoray.cli.models`) and the model FLOP utilisation (MFU):
``3 x FLOPs x samples/s`` (backward ~ twice the forward) over the device's dense peak.

The peak is measured side by side with each row: the FLOP rate of a large matrix product
on the same device and dtype (fp32 on CPU, bf16 on CUDA), measured right before and right
after the row's model (the better of the two), so a machine that drifts during the run
moves both; on a GPU the card's datasheet peak is reported beside it when the card is
known. The last line is
``models: ratio R (target 0.3)``, R the median MFU of the published encoders' ``small``
presets (``--quick``: tiny) against the measured peak.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import functools
import statistics
import time
from typing import Any

from benchmarks._runner import runner_parser, table, write_result

TARGET = 0.3
PUBLISHED = ("eegformer", "ast", "vit")
ENCODERS = (*PUBLISHED, "bandpower-mlp", "speechstats", "braindecode:EEGNet",
            "braindecode:ShallowFBCSPNet", "braindecode:EEGConformer")
#: dense bf16 peak FLOP/s (no sparsity) of cards we may be lent, by name fragment
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
#: batch per preset: big enough to keep the cores busy, small enough for base on CPU
BATCH = {"tiny": 16, "small": 8, "base": 2}


def gemm_peak(device, dtype, n: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of an ``n x n`` matrix product on ``device`` in ``dtype`` (best of a
    ``seconds``-long series): the dense peak this run measures MFU against."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_rate(model, shape: tuple[int, ...], batch: int, device, *, steps: int = 3,
               seconds: float = 2.0, warmup: int = 2) -> float:
    """Samples per second of forward + backward + AdamW on random ``(batch, *shape)``
    inputs: the median step after ``warmup`` dropped steps (the first ones build the
    kernels' plans), at least ``steps`` steps or until ``seconds`` have passed."""
    import torch

    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, *shape, device=device)
    cuda = torch.device(device).type == "cuda"
    times: list[float] = []
    t_end = None
    while t_end is None or len(times) <= steps or time.perf_counter() < t_end:
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model(x)
        out.pooled.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t)
        if t_end is None and len(times) >= warmup:      # warm-up steps are dropped
            times.clear()
            t_end = time.perf_counter() + seconds
        if len(times) >= 50:
            break
    return batch / statistics.median(times)


def measure_encoder(name: str, preset: str, contract, device) -> dict[str, Any]:
    """One row: parameters, forward FLOPs per sample, training samples/s."""
    import torch

    from emoray.cli.models import encoder_contract, measure
    from emoray.models import create_encoder, encoder_class

    kwargs = encoder_contract(name, contract)
    shape = tuple(encoder_class(name).input_shape(**kwargs))
    cost = measure(functools.partial(create_encoder, name, preset, **kwargs), {"x": shape},
                   lambda m, x: m(x["x"]))
    torch.manual_seed(0)
    model = create_encoder(name, preset, **kwargs)
    rate = train_rate(model, shape, BATCH[preset], device)
    return {"encoder": name, "preset": preset, "params": cost["params"],
            "flops": cost["flops"], "samples_s": rate,
            "flops_s": 3.0 * cost["flops"] * rate}


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg=None, device: str | None = None) -> dict[str, Any]:
    """Measure every encoder x preset on ``device`` (default: CUDA when present)."""
    import torch

    from emoray.cli.models import default_contract

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    card = torch.cuda.get_device_name() if cuda else None
    sheet = next((v for k, v in DATASHEET_BF16.items() if card and k in card), None)
    contract = default_contract()
    presets = ("tiny",) if quick else ("tiny", "small", "base")
    rows = []
    for name in ENCODERS:
        for preset in presets:
            before = gemm_peak(device, dtype)
            row = measure_encoder(name, preset, contract, device)
            row["peak_flops_s"] = max(before, gemm_peak(device, dtype))
            row["mfu"] = row["flops_s"] / row["peak_flops_s"]
            if sheet:
                row["mfu_datasheet"] = row["flops_s"] / sheet
            rows.append(row)
    headline = "tiny" if quick else "small"
    mfus = [r["mfu"] for r in rows if r["encoder"] in PUBLISHED and r["preset"] == headline]
    ratio = statistics.median(mfus)
    shown = [{"encoder": r["encoder"], "preset": r["preset"],
              "params": (f"{r['params'] / 1e6:.2f}M" if r["params"] >= 1e5
                         else f"{r['params'] / 1e3:.1f}K"), "GFLOPs": f"{r['flops'] / 1e9:.3f}",
              "samples/s": f"{r['samples_s']:.1f}", "TFLOP/s": f"{r['flops_s'] / 1e12:.3f}",
              "peak TFLOP/s": f"{r['peak_flops_s'] / 1e12:.3f}",
              "MFU": f"{100 * r['mfu']:.1f} %",
              **({"MFU (datasheet)": f"{100 * r['mfu_datasheet']:.1f} %"} if sheet else {})}
             for r in rows]
    peaks = [r["peak_flops_s"] for r in rows]
    peak = statistics.median(peaks)
    print(f"device: {card or 'cpu'} ({torch.get_num_threads()} threads), "
          f"{'bf16 autocast' if cuda else 'fp32'}; measured dense peak beside each row "
          f"{min(peaks) / 1e12:.3f}-{max(peaks) / 1e12:.3f} TFLOP/s (median "
          f"{peak / 1e12:.3f})" + (f", datasheet {sheet / 1e12:.0f}" if sheet else ""))
    print(table(shown, list(shown[0])))
    details = {"device": card or "cpu", "dtype": str(dtype), "peak_flops_s": peak,
               "datasheet_flops_s": sheet, "rows": rows, "headline_preset": headline,
               "quick": quick}
    path = write_result(out_dir, "models", ratio, TARGET, details)
    print(f"wrote {path}")
    print(f"models: ratio {ratio:.2f} (target {TARGET})")
    return details


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/models.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, device=args.device)


if __name__ == "__main__":
    main()
