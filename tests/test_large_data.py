"""prepare on data larger than memory: it streams the raw arrays, a shard per core at a time."""

import tracemalloc

import numpy as np

from loopline import records
from stages.prepare import prepare
from tests.conftest import synthetic_arrays, write_raw

PARAMS = {"seed": 7, "validation_size": 1000, "max_train_examples": None, "examples_per_shard": 500}


def test_prepare_holds_one_shard_not_the_data_set(tmp_path):
    arrays = synthetic_arrays(train=20_000, test=2_000)  # 17 MB of pixels
    raw = write_raw(tmp_path / "raw", arrays)
    tracemalloc.start()  # NumPy's allocations are traced; the memory maps are not memory
    try:
        meta = prepare(raw, tmp_path / "out", PARAMS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # About 4.4 MiB (copy buffers, and a shard of 500 images: 0.4 MB); loading the
    # arrays whole, as np.load does, holds 16 MB of training images alone.
    data_bytes = arrays["x_train"].nbytes + arrays["x_test"].nbytes
    assert peak < data_bytes / 3, f"{peak / 2**20:.1f} MiB at peak"

    # The same bytes as writing the splits from arrays in memory (the obvious way).
    order = np.random.default_rng(PARAMS["seed"]).permutation(20_000)
    expected = {"train": order[1000:], "validation": order[:1000]}
    reference = tmp_path / "reference"
    reference.mkdir()
    for split, indices in expected.items():
        images, labels = arrays["x_train"][indices], arrays["y_train"][indices]
        records.write_shards(images, labels, reference, split, PARAMS["examples_per_shard"])
    records.write_shards(arrays["x_test"], arrays["y_test"], reference, "test", 500)
    written = {path.name for path in (tmp_path / "out").iterdir()}
    assert written == {path.name for path in reference.iterdir()} | {"meta.json"}
    for path in reference.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name
    assert meta["splits"]["train"]["examples"] == 19_000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "raw", "reference"]
