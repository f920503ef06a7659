"""data.cache_vision_features: the frozen tower runs once per image; later epochs, stages and runs read it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_bad_input import EXPECTED_SKIPS, dirty_stage1, images  # noqa: F401  (fixtures)
from vlalign.data.feature_store import FeatureStore
from vlalign.errors import ConfigError
from vlalign.models.vision import VisionTower
from vlalign.train.loop import train


@pytest.fixture
def tower_calls(monkeypatch):
    """Counts images that went through any vision tower (every tower class's forward)."""
    calls = []
    for cls in VisionTower.__subclasses__():
        original = cls.forward

        def counted(self, pixel_values, _original=original):
            calls.append(pixel_values.shape[0])
            return _original(self, pixel_values)

        monkeypatch.setattr(cls, "forward", counted)
    return calls


def _losses(output_dir):
    return [row["loss"] for row in map(json.loads, (output_dir / "metrics.jsonl").read_text().splitlines())]


def test_cached_features_train_like_the_tower_and_are_reused_by_the_next_stage(tiny_config, tmp_path, tower_calls,
                                                                               capsys):
    cache = f"data.vision_feature_cache={tmp_path / 'features'}"
    plain = train(tiny_config(1, "train.epochs=2", f"train.output_dir={tmp_path / 'plain'}"))
    tower_images = sum(tower_calls)
    assert tower_images == 2 * 12  # 12 toy images, 2 epochs: the tower ran on every one, each epoch

    tower_calls.clear()
    cached = train(tiny_config(1, "train.epochs=2", "data.cache_vision_features=true", cache,
                               f"train.output_dir={tmp_path / 'cached'}"))
    assert sum(tower_calls) == 12  # once per distinct image, while building the cache; never while training
    assert "12 images, 12 computed now, 0 read from earlier runs" in capsys.readouterr().out
    # float16 storage: the losses follow the uncached run's closely
    np.testing.assert_allclose(_losses(cached.parent), _losses(plain.parent), rtol=2e-3)

    tower_calls.clear()
    train(tiny_config(2, "data.cache_vision_features=true", cache, f"train.init_from={cached}"))
    assert sum(tower_calls) == 0  # stage 2 reads stage 1's features (same tower, same images)
    assert "0 computed now, 12 read from earlier runs" in capsys.readouterr().out


def test_a_changed_image_file_is_computed_again(tiny_config, toy_data, tmp_path, tower_calls):
    import shutil

    from PIL import Image

    root = tmp_path / "images"
    shutil.copytree(toy_data["image_root"], root)
    settings = ("data.cache_vision_features=true", f"data.vision_feature_cache={tmp_path / 'features'}",
                f"data.image_root={root}", "train.max_steps=1")
    train(tiny_config(1, *settings, f"train.output_dir={tmp_path / 'a'}"))
    records = json.loads(open(toy_data["stage1"]).read())
    changed = root / records[0]["image"]
    Image.new("RGB", (64, 64), (0, 0, 0)).save(changed)  # same path, other pixels
    tower_calls.clear()
    train(tiny_config(1, *settings, f"train.output_dir={tmp_path / 'b'}"))
    assert sum(tower_calls) == 1


def test_unreadable_images_are_reported_by_the_skip_policy_as_without_the_cache(tiny_config, dirty_stage1, tmp_path):
    config = tiny_config(1, f"data.train_file={dirty_stage1}", f"data.image_root={dirty_stage1.parent}",
                         "data.on_error=skip", "train.max_steps=2", "data.cache_vision_features=true",
                         f"data.vision_feature_cache={tmp_path / 'features'}")
    final = train(config)
    report = json.loads((final.parent / "data_report.json").read_text())
    assert report["skipped"] == EXPECTED_SKIPS


@pytest.mark.parametrize("settings, message", [
    (("train.tune.vision=full",), "needs a frozen vision tower"),
])
def test_a_training_tower_refuses_the_cache(tiny_config, settings, message):
    from vlalign.train.checks import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(tiny_config(2, "data.cache_vision_features=true", *settings))


def test_a_connector_that_reads_pixels_refuses_the_cache(tiny_config, tiny_query_models):
    from vlalign.train.checks import check_config

    options = {"mae": tiny_query_models["mae"], "text_encoder": tiny_query_models["bert"]}
    config = tiny_config(1, "model.connector=xformer", f"model.connector_options={json.dumps(options)}",
                         "data.cache_vision_features=true")
    with pytest.raises(ConfigError, match="reads the pixels too"):
        check_config(config)


def test_features_that_overflow_float16_are_refused_and_nothing_is_indexed(tmp_path):
    store = FeatureStore(tmp_path)

    def rows(start, stop):
        values = np.ones((stop - start, 4, 2), dtype=np.float32)
        values[0, 0, 0] = 1e6  # beyond float16's 65504
        return values, [f"d{i}" for i in range(start, stop)]

    with pytest.raises(ValueError, match="not finite in float16"):
        store.write_shard(["d0", "d1"], rows, batch_size=2)
    assert len(FeatureStore(tmp_path)) == 0 and not list(tmp_path.glob("*.json"))


def test_store_keeps_rows_across_shards_and_rehashes_only_changed_files(tmp_path):
    store = FeatureStore(tmp_path / "store")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"first"), b.write_bytes(b"second")
    digests = store.digests([a, b])
    store.write_shard(digests[:1], lambda s, e: (np.full((1, 2, 2), 1.5, np.float32), digests[:1]), 8)
    store.write_shard(digests[1:], lambda s, e: (np.full((1, 2, 2), -2.0, np.float32), digests[1:]), 8)
    reopened = FeatureStore(tmp_path / "store")
    assert reopened.read(digests[0]).tolist() == [[1.5, 1.5], [1.5, 1.5]]
    assert reopened.read(digests[1]).dtype == np.float16 and float(reopened.read(digests[1])[0, 0]) == -2.0
    a.write_bytes(b"changed")
    assert reopened.digests([a, b])[0] != digests[0] and reopened.digests([a, b])[1] == digests[1]
