"""WebDataset shards: round trip on real chips, rank/worker split, fsspec URLs, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusionsat.data import DataError, ShardDataset, ShardWriter, iter_chips, open_raster, write_chips
from diffusionsat.data.shards import expand_urls


@pytest.fixture(scope="module")
def naip_chips(shared_data):
    info = open_raster(shared_data / "naip-timeseries/m_4709963_se_14_1_20180716.tif", date_pattern="*_{YYYYMMDD}.tif")
    return list(iter_chips(info, 96, stride=160))


@pytest.fixture(scope="module")
def shard_dir(naip_chips, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_chips(naip_chips, out, max_samples=4)
    return out


def test_round_trip_identical_pixels_and_metadata(naip_chips, shard_dir):
    assert len(list(shard_dir.glob("shard-*.tar"))) == -(-len(naip_chips) // 4)
    got = {s["key"]: s for s in ShardDataset(shard_dir, raw=True, rank=0, world_size=1)}
    assert sorted(got) == sorted(c.key for c in naip_chips)
    for chip in naip_chips:
        sample = got[chip.key]
        assert np.array_equal(sample["image"], chip.image)
        assert sample["metadata"] == chip.metadata
        assert sample["caption"] == chip.caption
        assert torch.equal(sample["pixel_values"], chip.to_sample()["pixel_values"])
        assert sample["record"]["crs_label"] == "EPSG:26914"
    assert ShardDataset(shard_dir, rank=1, world_size=2).captions() == [c.caption for c in naip_chips]


def test_round_trip_uint16_and_float_as_geotiff(shared_data, tmp_path):
    for rel in ("landsat8-bands/LC81210442015044LGN00_B3.tif", "spacenet-samples/ms1.tif"):
        chips = list(iter_chips(open_raster(shared_data / rel), 64, stride=200))[:2]
        write_chips(chips, tmp_path / rel.split("/")[0])
        got = list(ShardDataset(tmp_path / rel.split("/")[0], raw=True, rank=0, world_size=1))
        assert [s["key"] for s in got] == [c.key for c in chips]
        for s, c in zip(got, chips):
            assert s["image"].dtype == c.image.dtype and np.array_equal(s["image"], c.image)
            assert s["metadata"] == c.metadata


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_rank_split_reads_every_sample_once(naip_chips, shard_dir, world_size):
    keys = []
    for rank in range(world_size):
        keys += [s["key"] for s in ShardDataset(shard_dir, rank=rank, world_size=world_size, shuffle_buffer=3, seed=1)]
    assert sorted(keys) == sorted(c.key for c in naip_chips)


def test_rank_and_dataloader_worker_split_with_epochs(naip_chips, shard_dir):
    expected = sorted(c.key for c in naip_chips)
    orders = []
    for epoch in (0, 1):
        keys = []
        for rank in range(2):
            ds = ShardDataset(shard_dir, rank=rank, world_size=2, shuffle_buffer=4, seed=3)
            ds.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
            keys += [s["key"] for s in loader]
        assert sorted(keys) == expected
        orders.append(keys)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_rank_from_environment(shard_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ShardDataset(shard_dir)
    assert (ds.rank, ds.world_size) == (1, 2)
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 out of range"):
        ShardDataset(shard_dir)


def test_fsspec_url_and_brace_range(shard_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in sorted(shard_dir.glob("*.tar")):
        fs.pipe(f"/bucket/{path.name}", path.read_bytes())
    urls = expand_urls("memory://bucket/shard-{000000..000001}.tar")
    assert urls == ["memory://bucket/shard-000000.tar", "memory://bucket/shard-000001.tar"]
    local = [s["key"] for s in ShardDataset(sorted(shard_dir.glob("*.tar"))[:2], rank=0, world_size=1)]
    remote = [s["key"] for s in ShardDataset("memory://bucket/shard-{000000..000001}.tar", rank=0, world_size=1)]
    assert remote == local and len(remote) == 8
    assert len(expand_urls("memory://bucket/*.tar")) == len(list(shard_dir.glob("*.tar")))


def test_interrupted_writer_leaves_no_shard_under_its_final_name(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, max_samples=10) as writer:
        writer.write("a", {"txt": "x", "json": {}})
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_bad_keys_and_bad_shards(tmp_path):
    with ShardWriter(tmp_path) as writer, pytest.raises(ValueError, match="no dots"):
        writer.write("a.b", {"txt": "x"})
    (tmp_path / "broken.tar").write_bytes(b"not a tar file at all" * 30)
    with pytest.raises(DataError, match="broken.tar: not a readable tar shard"):
        list(ShardDataset(tmp_path / "broken.tar", rank=0, world_size=1))
    with pytest.raises(DataError, match="missing.tar: shard not found"):
        list(ShardDataset(tmp_path / "missing.tar", rank=0, world_size=1))
