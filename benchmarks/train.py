"""Fusion training: Ray Train with Ray Data ingest vs a plain single-process PyTorch loop.

Both sides train the same :class:`~emoray.models.FusionModel` (encoders
:data:`ENCODERS`) on the same rows (the within-subject train split of the same feature
shards) with the same optimizer (AdamW), per-process batch size and loss
(``model.fusion.loss(out, y, aux_weight)``), one after the other on the same cores:

``ray_train``
    :func:`emoray.train.stages.fusion.train_fusion` on the local Ray, with 2 workers x 0.5 CPU
    (RAY.md trap 2: Ray Data keeps CPUs to read) and with 1 worker x 1 CPU. The split
    datasets are materialised in the object store before the workers start
    (``materialize=True``), as the plain loop also holds its rows in memory.
``plain``
    The rows read in-process with pyarrow, sliced into batches in file order (Ray Train's
    shard is not shuffled either) and turned into tensors by the same
    :func:`~emoray.data.features.batch_to_tensors`.

Throughput is global samples trained per second of training-loop wall time, from the
second epoch on (the first one warms up: DDP set-up, first streaming split, allocator).
The fastest of those epochs counts for each side (as the ingest benchmark counts each
side's best repeat: other work on a shared machine only ever slows an epoch down); their
overall rate is reported beside it. Ray's per-epoch ``train_samples``/``train_seconds``
come from the run's own history (``train_state.pt`` of its last checkpoint); validation
is outside ``train_seconds``. Ray's equal split of the train set across workers drops up
to ``workers - 1`` rows per epoch; the counts used are the rows actually trained.
The end-to-end wall time (Ray: the whole ``train_fusion`` call, worker start-up,
per-epoch validation and checkpoints included; plain: reading, model set-up and every
epoch, no validation) is reported beside it.

Threads are kept fair: each Ray worker gets the intra-op threads Ray gives it (Ray sets
``OMP_NUM_THREADS`` from the worker's CPUs, at least 1: probed, not assumed), and the
plain loop gets as many threads as the Ray workers of the run it is compared with have
together (``torch.set_num_threads``): the 2-worker run against a plain loop with their
sum, the 1-worker run against a plain loop with its own count.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

from benchmarks._runner import runner_parser, start_ray, table, write_result
from emoray.config import RayConfig

TARGET = 0.9
ENCODERS = {"eeg": "small", "speech": "small", "video": "small"}
#: (num_workers, cpus_per_worker) of the Ray Train runs; the first is the headline run.
RAY_RUNS = ((2, 0.5), (1, 1.0))
BATCH_SIZE = 16


def stage_config(epochs: int, num_workers: int = 2, cpus_per_worker: float = 0.5):
    """The fusion-stage config both sides use (fails fast instead of retrying)."""
    from emoray.config import FusionStageConfig

    return FusionStageConfig(encoders=dict(ENCODERS), epochs=epochs, batch_size=BATCH_SIZE,
                             num_workers=num_workers, cpus_per_worker=cpus_per_worker,
                             materialize=True, max_failures=0, controller_failure_limit=0)


def steady(samples: list[int], seconds: list[float]) -> tuple[float, float]:
    """Steady-state samples/s over the epochs after the first (all if there is only one):
    ``(best, mean)``, the fastest epoch's and the overall rate of those epochs."""
    skip = 1 if len(samples) > 1 else 0
    rates = [n / s for n, s in zip(samples[skip:], seconds[skip:]) if s > 0]
    total_s = sum(seconds[skip:])
    mean = sum(samples[skip:]) / total_s if total_s > 0 else float("nan")
    return (max(rates) if rates else float("nan")), mean


# -- data -----------------------------------------------------------------------------------

def make_features(work: Path, quick: bool, bench: str = "train") -> Path:
    """Synthetic corpus -> ingest -> preprocess into ``work``; return the feature folder.

    Native layout (every trial has EEG, speech and video), 2 s segments, video in the
    contract as 4 frames of 32 x 32 (the small ViT's 16 px patches: 4 per frame).
    """
    from emoray.config import IngestConfig, PreprocessConfig
    from emoray.data.ingest import run_ingest
    from emoray.data.preprocess import run_preprocess
    from emoray.synth.config import SynthConfig
    from emoray.synth.corpus import write_corpus

    synth = SynthConfig(subjects=2 if quick else 3, trials_per_class=1 if quick else 4,
                        seconds=4.0 if quick else 8.0, seed=11, video_fps=10.0,
                        video_size=48)
    print(f"bench {bench}: generating features ({synth.subjects} subjects x "
          f"{synth.trials_per_class * 5} trials x {synth.seconds:g} s, 2 s segments) in {work}")
    write_corpus(synth, work / "corpus", progress=False)
    run_ingest(IngestConfig(source=str(work / "corpus"), output=str(work / "records"),
                            segment_seconds=2.0), echo=lambda *_: None)
    cfg = PreprocessConfig(input=str(work / "records"), output=str(work / "features"))
    cfg.contract.video.size, cfg.contract.video.n_frames = 32, 4
    run_preprocess(cfg, echo=lambda *_: None)
    return work / "features"


def read_train_rows(features: Path, train_ids: set[str], modalities: list[str]):
    """The train rows as one in-memory Arrow table (pyarrow, in-process, file order)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from emoray.data.features import feature_metadata
    from emoray.data.shards import shard_files
    from emoray.train.stages.fusion import feature_columns

    columns = ["record_id", "label"] + feature_columns(feature_metadata(features), modalities)
    ids = pa.array(sorted(train_ids), pa.string())
    parts = []
    for f in shard_files(features):
        t = pq.read_table(f, columns=columns)
        parts.append(t.filter(pc.is_in(t["record_id"], value_set=ids)))
    return pa.concat_tables(parts).combine_chunks()


# -- the two sides --------------------------------------------------------------------------

def plain_loop(features: Path, train_ids: set[str], cfg, threads: int) -> dict[str, Any]:
    """Train in this process with ``threads`` intra-op threads; per-epoch samples/seconds."""
    import torch

    from emoray.config.contract import PreprocessContract
    from emoray.data.features import batch_to_tensors, feature_metadata
    from emoray.models import FusionModel

    t0 = time.perf_counter()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        meta = feature_metadata(features)
        rows = read_train_rows(features, train_ids, cfg.modalities)
        contract = PreprocessContract.from_json(json.dumps(meta["contract"]))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        amp = device.type == "cuda"
        torch.manual_seed(cfg.seed)
        model = FusionModel.from_contract(contract, n_classes=len(meta["label_names"]),
                                          cfg=cfg).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        samples, seconds = [], []
        for _ in range(cfg.epochs):
            n, t_epoch = 0, time.perf_counter()
            for start in range(0, rows.num_rows, cfg.batch_size):
                part = rows.slice(start, cfg.batch_size)
                # the numpy batch Ray Data's iter_batches(batch_format="numpy") yields:
                # list columns as object arrays of per-row arrays (None where null)
                batch = {c: part[c].to_numpy(zero_copy_only=False) for c in part.column_names}
                t = batch_to_tensors(batch, meta, device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = model(t)
                loss, _ = model.fusion.loss(out, t["label"], aux_weight=cfg.aux_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(t["label"])
            if device.type == "cuda":
                torch.cuda.synchronize()
            samples.append(n)
            seconds.append(time.perf_counter() - t_epoch)
    finally:
        torch.set_num_threads(saved_threads)
    return {"workers": 1, "threads": threads, "epoch_samples": samples,
            "epoch_seconds": seconds, "wall_s": time.perf_counter() - t0}


def ray_train(features: Path, run_dir: Path, cfg, threads_per_worker: int) -> dict[str, Any]:
    """One :func:`train_fusion` run; per-epoch samples/seconds from its history."""
    from emoray.train.curves import read_history
    from emoray.train.stages.fusion import train_fusion

    t0 = time.perf_counter()
    result = train_fusion(features, run_dir, cfg, name=f"bench-{cfg.num_workers}w")
    wall = time.perf_counter() - t0
    history = read_history(result["checkpoint"])
    if len(history) != cfg.epochs or "train_seconds" not in history[-1]:
        raise RuntimeError(f"run {result['path']}: expected {cfg.epochs} epochs with "
                           f"train_samples/train_seconds in its history, got {len(history)}")
    return {"workers": cfg.num_workers, "cpus_per_worker": cfg.cpus_per_worker,
            "threads": cfg.num_workers * threads_per_worker,
            "epoch_samples": [int(h["train_samples"]) for h in history],
            "epoch_seconds": [float(h["train_seconds"]) for h in history], "wall_s": wall}


def worker_threads(cpus: list[float]) -> dict[float, int]:
    """Intra-op threads torch gets in a Ray actor holding ``c`` CPUs, for each ``c``."""
    import ray

    @ray.remote
    class _Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    actors = {c: _Probe.options(num_cpus=c).remote() for c in cpus}
    try:
        return {c: int(ray.get(a.threads.remote(), timeout=120)) for c, a in actors.items()}
    finally:
        for a in actors.values():
            ray.kill(a)


# -- the benchmark --------------------------------------------------------------------------

def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg: RayConfig | None = None, features: str | Path | None = None,
                  epochs: int | None = None) -> dict[str, Any]:
    """Run both sides, print the table, write ``OUT_DIR/train.json``; return the figures.

    Parameters
    ----------
    quick : bool
        A small corpus (when ``features`` is not given), 2 epochs (1 measured) and only
        the 2-worker Ray Train run (no 1-worker run, no scaling figure).
    out_dir : str | Path
        Folder of the JSON result.
    ray_cfg : RayConfig | None
        How to start or join Ray (default: an embedded local Ray of 2 CPUs).
    features : str | Path | None
        A preprocess output folder to reuse instead of generating one.
    epochs : int | None
        Epochs per run (default 2 quick, 4 otherwise); the first is warm-up.

    Raises
    ------
    DataError
        ``features`` is not a folder of feature shards, or its split has no train rows.
    ConfigError
        ``epochs`` is below 1.
    """
    import ray

    from emoray.data.features import feature_metadata
    from emoray.data.shards import shard_files
    from emoray.errors import ConfigError, DataError
    from emoray.train.split import within_subject_split

    epochs = epochs if epochs is not None else (2 if quick else 4)
    if epochs < 1:
        raise ConfigError(f"epochs: expected >= 1, got {epochs}")
    if features is not None:
        feature_metadata(features)             # a bad folder fails before Ray starts
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-train-"))
    load = {"before": os.getloadavg()}         # other work on the machine skews every figure
    start_ray(ray_cfg or RayConfig(num_cpus=2), out_dir, "train")
    try:
        feat = Path(features).resolve() if features is not None else make_features(work, quick)
        train_ids, _ = within_subject_split(shard_files(feat))
        if not train_ids:
            raise DataError(str(feat), "the within-subject split has no train rows",
                            kind="label")
        gpus = ray.cluster_resources().get("GPU", 0)
        ray_runs = [(w, c) for w, c in RAY_RUNS if not gpus or w <= gpus]   # 1 GPU/worker
        ray_runs = ray_runs[:1] if quick else ray_runs     # each run starts ~25 s of Ray
        threads = worker_threads(sorted({c for _, c in ray_runs}))
        print(f"bench train: {len(train_ids)} train rows, {epochs} epochs (first = warm-up), "
              f"batch {BATCH_SIZE} per process, encoders {ENCODERS}; threads per Ray worker "
              f"{ {f'{c:g} CPU': n for c, n in threads.items()} }")
        runs = _run_sides(feat, train_ids, epochs, ray_runs, threads, work / "runs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load["after"] = os.getloadavg()
    info = dict(n_train=len(train_ids), epochs=epochs, batch_size=BATCH_SIZE,
                encoders=ENCODERS, quick=quick, loadavg=load,
                features=str(features) if features is not None else "generated",
                threads_per_worker={f"{c:g}": n for c, n in threads.items()})
    return _report(runs, [f"ray_{w}w" for w, _ in ray_runs], out_dir, info)


def _run_sides(feat: Path, train_ids: set[str], epochs: int, ray_runs, threads,
               run_dir: Path) -> dict[str, dict[str, Any]]:
    """Each Ray Train run, preceded by the plain loop with its total thread count."""
    runs: dict[str, dict[str, Any]] = {}
    for w, c in ray_runs:
        plain_key = f"plain_{w * threads[c]}t"
        if plain_key not in runs:
            runs[plain_key] = plain_loop(feat, train_ids, stage_config(epochs),
                                         w * threads[c])
        runs[f"ray_{w}w"] = ray_train(feat, run_dir, stage_config(epochs, w, c), threads[c])
        runs[f"ray_{w}w"]["compared_with"] = plain_key
    return runs


def _report(runs: dict[str, dict[str, Any]], ray_keys: list[str], out_dir,
            info: dict[str, Any]) -> dict[str, Any]:
    """Print the table and ratios, write the JSON, print the closing line."""
    for r in runs.values():
        r["samples_per_s"], r["samples_per_s_mean"] = steady(r["epoch_samples"],
                                                             r["epoch_seconds"])

    def vs_plain(r: dict[str, Any]) -> float:
        return r["samples_per_s"] / runs[r["compared_with"]]["samples_per_s"]

    rows = [{"runner": key, "workers": r["workers"], "threads": r["threads"],
             "samples/s": f"{r['samples_per_s']:.2f}",
             "mean": f"{r['samples_per_s_mean']:.2f}",
             "vs plain": f"{vs_plain(r):.2f}" if "compared_with" in r else "",
             "epoch s": ", ".join(f"{s:.1f}" for s in r["epoch_seconds"]),
             "wall s (e2e)": f"{r['wall_s']:.1f}"} for key, r in runs.items()]
    print(table(rows, ["runner", "workers", "threads", "samples/s", "mean", "vs plain",
                       "epoch s", "wall s (e2e)"]))
    head = runs[ray_keys[0]]
    ratio = vs_plain(head)
    best_plain = max(r["samples_per_s"] for k, r in runs.items() if k.startswith("plain"))
    extra = {"ratio_vs_best_plain": head["samples_per_s"] / best_plain,
             "e2e_ratio": runs[head["compared_with"]]["wall_s"] / head["wall_s"]}
    if len(ray_keys) > 1:
        one = runs[ray_keys[1]]
        extra["scaling_2w_vs_1w"] = head["samples_per_s"] / one["samples_per_s"]
        extra["ray_1w_vs_plain"] = vs_plain(one)
    print(f"ratios: {ray_keys[0]} / {head['compared_with']} {ratio:.2f}, "
          + ", ".join(f"{k} {v:.2f}" for k, v in extra.items())
          + f"; load average before/after {info['loadavg']['before'][0]:.1f}/"
          f"{info['loadavg']['after'][0]:.1f}")
    if not math.isfinite(ratio) or ratio <= 0:
        raise RuntimeError(f"bench train: no usable throughput (ratio {ratio})")
    path = write_result(out_dir, "train", round(ratio, 3), TARGET,
                        dict(info, runs=runs, **{k: round(v, 3) for k, v in extra.items()}))
    print(f"wrote {path}")
    print(f"train: ratio {ratio:.2f} (target {TARGET})")
    return dict(extra, ratio=ratio, runs=runs, path=str(path))


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/train.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--epochs", type=int, help="epochs per run (first = warm-up)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, features=args.features,
                  epochs=args.epochs)


if __name__ == "__main__":
    main()
