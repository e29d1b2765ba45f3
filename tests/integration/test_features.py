"""Feature shards read back as tensors through Ray Data, presence masks for absent modalities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoray.data.features import batch_to_tensors, feature_metadata, read_features
from emoray.errors import DataError

pytestmark = pytest.mark.integration


def test_batches_become_tensors_with_presence_masks(eav_features):
    meta = feature_metadata(eav_features / "feat")
    ds = read_features(eav_features / "feat")
    rows, speech_present = 0, []
    for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
        t = batch_to_tensors(batch, meta)
        b = len(t["label"])
        rows += b
        n_ch = len(meta["contract"]["eeg"]["channels"])
        assert t["eeg"].shape == (b, n_ch, 200) and t["eeg"].dtype == torch.float32
        assert t["logmel"].shape == (b, 128, 201)
        assert t["video"].shape == (b, 4, 3, 32, 32)
        assert t["eeg_present"].all() and t["video_present"].all()
        assert torch.isfinite(t["video"]).all() and t["video"].abs().max() < 3.0
        # listening trials have no speech: zeros with a False mask, never a fake signal
        absent = ~t["speech_present"]
        assert (t["logmel"][absent] == 0).all() and (t["audio_stats"][absent] == 0).all()
        speech_present.extend(t["speech_present"].tolist())
        assert ((t["label"] >= 0) & (t["label"] < 5)).all()
    assert rows == 40
    assert 0 < sum(speech_present) < rows            # both tasks are there


def test_both_ray_data_parquet_readers_give_the_same_split(eav_features):
    """The embedded Ray (and this session) reads with Ray Data's V1 Parquet reader; a joined
    cluster with Ray's default, V2. The stages' split reads the same rows with either."""
    import ray.data

    from emoray.data.shards import shard_files
    from emoray.train.split import split_datasets, within_subject_split

    feat = eav_features / "feat"
    train_ids, val_ids = within_subject_split(shard_files(feat))
    ctx = ray.data.DataContext.get_current()
    seen = {}
    before = ctx.use_datasource_v2
    try:
        for v2 in (False, True):
            ctx.use_datasource_v2 = v2
            parts = split_datasets(feat, ["record_id", "label", "eeg_de"], train_ids, val_ids,
                                   materialize=False)
            seen[v2] = {k: sorted((r["record_id"], r["label"], len(r["eeg_de"]))
                                  for r in ds.take_all()) for k, ds in parts.items()}
    finally:
        ctx.use_datasource_v2 = before
    assert seen[False] == seen[True]
    assert {r[0] for r in seen[True]["train"]} == train_ids
    assert {r[0] for r in seen[True]["val"]} == val_ids


def test_the_split_reads_rows_in_file_order_every_time(eav_features):
    """A seeded stage's batches follow its rows' order: materialised with either reader,
    the split's rows come in shard-file order, the same in every read (Ray Data's V2
    reader handed them out as its tasks finished: a different order each time)."""
    import pyarrow.parquet as pq
    import ray.data

    from emoray.data.shards import shard_files
    from emoray.train.split import split_datasets, within_subject_split

    feat = eav_features / "feat"
    files = shard_files(feat)
    train_ids, val_ids = within_subject_split(files)
    in_files = [i for f in files for i in pq.read_table(f, columns=["record_id"])
                .column("record_id").to_pylist()]
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    orders = []
    try:
        for v2 in (True, True, True, False):
            ctx.use_datasource_v2 = v2
            parts = split_datasets(feat, ["record_id"], train_ids, val_ids, materialize=True)
            orders.append([r["record_id"] for r in parts["train"].iter_rows()])
    finally:
        ctx.use_datasource_v2 = before
    assert orders[0] == [i for i in in_files if i in train_ids]
    assert all(order == orders[0] for order in orders[1:])


def test_record_shards_are_refused(eav_features):
    with pytest.raises(DataError, match="expected feature shards"):
        feature_metadata(eav_features / "rec")


def test_wrong_size_row_is_named():
    meta = {"feature_shapes": {"eeg_de": [2, 5]}}
    batch = {"eeg_de": np.array([np.zeros(10), np.zeros(9)], dtype=object)}
    with pytest.raises(DataError, match="row 1 has 9 values; expected 10"):
        batch_to_tensors(batch, meta)


def test_float32_video_storage_and_uint8_normalisation_agree():
    contract = {"video": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    frames = np.random.default_rng(0).integers(0, 256, (2, 1, 3, 2, 2), dtype=np.uint8)
    normalised = (frames.astype(np.float32) / 255 - 0.5) / 0.25
    shapes = {"video": [1, 3, 2, 2]}
    as_uint8 = batch_to_tensors(
        {"video": np.array([f.ravel() for f in frames] + [None], dtype=object),
         "video_f32": np.array([None, None, None], dtype=object)},
        {"feature_shapes": shapes, "contract": contract, "video_storage": "uint8"})
    as_f32 = batch_to_tensors(
        {"video": np.array([None, None, None], dtype=object),
         "video_f32": np.array([f.ravel() for f in normalised] + [None], dtype=object)},
        {"feature_shapes": shapes, "contract": contract, "video_storage": "float32"})
    assert as_uint8["video_present"].tolist() == as_f32["video_present"].tolist() == [True, True, False]
    torch.testing.assert_close(as_uint8["video"], as_f32["video"])
    assert (as_uint8["video"][2] == 0).all()
