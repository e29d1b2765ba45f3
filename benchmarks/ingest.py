"""Ingest + preprocess: the Ray Data pipeline vs a plain sequential loop, in one run.

Both sides call the same functions (:func:`emoray.data.ingest.process_group` and
:func:`emoray.data.preprocess.process_shard`) on the same generated corpus; the only
difference is the runner. Ray start-up is excluded (a cluster is long-lived) and reported
separately; each side runs ``repeats`` times, alternating, and its best time counts.

A third runner, a plain ``multiprocessing`` pool of as many processes as Ray has CPUs,
measures what the machine itself gives to parallel processes on this work (the ceiling
for any framework); ``ray_efficiency`` is Ray's throughput relative to it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import argparse
import hashlib
import shutil
import tempfile
import time

from benchmarks._runner import start_ray, table, write_result
from emoray.config import IngestConfig, PreprocessConfig, RayConfig

TARGET = 1.8


def _digest(folder: Path) -> str:
    """A content digest of a feature-shard folder (to check both sides agree)."""
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for f in sorted((folder / "shards").glob("part-*.parquet")):
        table_ = pq.read_table(f).drop_columns(["extra"])
        h.update(str(table_.to_pydict()).encode())
    return h.hexdigest()[:16]


class _Pool:
    """Runners over a plain process pool (one thread per process, like Ray workers)."""

    def __init__(self, n: int):
        import multiprocessing as mp

        self.pool = mp.get_context("spawn").Pool(n, initializer=_one_thread)

    def ingest(self, tasks):
        from emoray.data.ingest import process_group

        return self.pool.map(process_group, tasks, chunksize=1)

    def preprocess(self, tasks):
        from emoray.data.preprocess import process_shard

        return self.pool.map(process_shard, tasks, chunksize=1)


def _one_thread() -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"


def _one(corpus: Path, out: Path, ingest_runner, prep_runner, video_size: int) -> dict:
    from emoray.data import ingest, preprocess

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    rep = ingest.run_ingest(IngestConfig(source=str(corpus), output=str(out / "records"),
                                         force=True), runner=ingest_runner, echo=lambda *_: None)
    t1 = time.perf_counter()
    cfg = PreprocessConfig(input=str(out / "records"), output=str(out / "features"), force=True)
    cfg.contract.video.size = video_size
    cfg.contract.video.n_frames = 10
    prep = preprocess.run_preprocess(cfg, runner=prep_runner, echo=lambda *_: None)
    t2 = time.perf_counter()
    return {"ingest_s": t1 - t0, "preprocess_s": t2 - t1, "total_s": t2 - t0,
            "trials": rep["ingested"], "records": prep["records_out"]}


def run_benchmark(quick: bool = False, out_dir: str = "benchmarks/results",
                  ray_cfg: RayConfig | None = None, repeats: int | None = None) -> dict:
    from emoray.data import ingest, preprocess
    from emoray.synth.config import SynthConfig
    from emoray.synth.corpus import write_corpus

    repeats = repeats or (1 if quick else 2)
    synth = SynthConfig(subjects=2 if quick else 4, trials_per_class=2 if quick else 4,
                        seconds=10.0, seed=7)
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-ingest-"))
    try:
        print(f"bench ingest: generating a corpus ({synth.subjects} subjects x "
              f"{synth.trials_per_class * 5} trials x {synth.seconds:g} s) in {work}")
        write_corpus(synth, work / "corpus", progress=False)
        t = time.perf_counter()
        start_ray(ray_cfg or RayConfig(num_cpus=2), out_dir, "ingest")
        ray_start = time.perf_counter() - t
        import ray

        pool = _Pool(int(ray.cluster_resources().get("CPU", 2)))
        runs = {"sequential": [], "ray_data": [], "process_pool": []}
        for _ in range(repeats):
            runs["sequential"].append(_one(work / "corpus", work / "seq", ingest.run_tasks_local,
                                           preprocess.run_tasks_local, 64))
            runs["ray_data"].append(_one(work / "corpus", work / "ray", ingest.run_tasks_ray,
                                         preprocess.run_tasks_ray, 64))
            runs["process_pool"].append(_one(work / "corpus", work / "pool", pool.ingest,
                                             pool.preprocess, 64))
        pool.pool.terminate()
        same = _digest(work / "seq" / "features") == _digest(work / "ray" / "features")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    best = {}
    for name, results in runs.items():
        b = min(results, key=lambda r: r["total_s"])
        best[name] = b
        rows.append({"pipeline": name, "records": b["records"],
                     "ingest s": f"{b['ingest_s']:.1f}", "preprocess s": f"{b['preprocess_s']:.1f}",
                     "total s": f"{b['total_s']:.1f}",
                     "records/s": f"{b['records'] / b['total_s']:.2f}",
                     "runs": ", ".join(f"{r['total_s']:.1f}" for r in results)})
    ratio = best["sequential"]["total_s"] / best["ray_data"]["total_s"]
    ceiling = best["sequential"]["total_s"] / best["process_pool"]["total_s"]
    print(table(rows, ["pipeline", "records", "ingest s", "preprocess s", "total s",
                       "records/s", "runs"]))
    print(f"outputs identical: {'yes' if same else 'NO'}; Ray start-up (excluded): "
          f"{ray_start:.1f} s")
    print(f"machine ceiling (process pool / sequential): {ceiling:.2f}; Ray Data efficiency "
          f"vs that ceiling: {ratio / ceiling:.2f}")
    path = write_result(out_dir, "ingest", round(ratio, 3), TARGET,
                        {"runs": runs, "outputs_identical": same, "ray_start_s": ray_start,
                         "process_pool_ratio": round(ceiling, 3),
                         "ray_efficiency": round(ratio / ceiling, 3),
                         "corpus": synth.model_dump(), "quick": quick, "repeats": repeats})
    print(f"wrote {path}")
    print(f"ingest: ratio {ratio:.2f} (target {TARGET})")
    return {"ratio": ratio, "runs": runs, "identical": same}


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/ingest.py``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run for smoke checks")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
