"""IQARAG reference selection (METHODS §2.3) on hand-made distances, and the reference-image LRU cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lmmiqa.errors import ConfigError
from lmmiqa.retrieval.cache import ImageLRU
from lmmiqa.retrieval.select import mos_bins, normalize_mos, select_references, self_hits


def test_normalize_mos_min_max_and_flip():
    norm, lo, hi = normalize_mos([1.0, 2.0, 5.0])
    assert (lo, hi) == (1.0, 5.0)
    np.testing.assert_allclose(norm, [0.0, 0.25, 1.0])
    flipped, lo, hi = normalize_mos([10.0, 30.0, 50.0], higher_is_better=False)  # DMOS: 10 is the best
    np.testing.assert_allclose(flipped, [1.0, 0.5, 0.0])


@pytest.mark.parametrize("bad", [[], [3.0, 3.0], [1.0, float("nan")]])
def test_normalize_mos_rejects_degenerate_input(bad):
    with pytest.raises(ConfigError):
        normalize_mos(bad)


def test_bins_are_equal_fifths_numbered_one_to_five():
    m = [0.0, 0.1999, 0.2, 0.3999, 0.4, 0.6, 0.7999, 0.8, 0.99, 1.0]
    assert mos_bins(m).tolist() == [1, 1, 2, 2, 3, 4, 4, 5, 5, 5]
    # float noise at an inner edge does not move a value down a bin (0.6 * 5 = 3.0000000000000004)
    assert mos_bins([0.3 * 2, 0.1 + 0.1 + 0.1 + 0.1 + 0.1 + 0.1]).tolist() == [4, 4]
    assert mos_bins([-0.5, 1.5]).tolist() == [1, 5]


# bank rows:   0    1    2    3    4    5    6    7
BINS = np.array([1, 1, 2, 3, 3, 5, 5, 4])


def test_nearest_hit_per_bin_lowest_bin_first():
    indices = [0, 1, 2, 3, 4, 5, 6, 7]
    distances = [0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.7]
    refs = select_references(distances, indices, BINS, top_k=50)
    assert [(r.bin, r.index) for r in refs] == [(1, 1), (2, 2), (3, 4), (4, 7), (5, 6)]
    assert [r.distance for r in refs] == [0.1, 0.5, 0.2, 0.7, 0.4]
    by_distance = select_references(distances, indices, BINS, top_k=50, order="distance")
    assert [r.index for r in by_distance] == [1, 4, 6, 2, 7]


def test_only_the_top_k_nearest_are_considered_and_empty_bins_are_skipped():
    indices = [0, 1, 2, 3, 4, 5, 6, 7]
    distances = [0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.7]
    refs = select_references(distances, indices, BINS, top_k=3)  # rows 1 (bin 1), 4 (bin 3), 3 (bin 3)
    assert [(r.bin, r.index) for r in refs] == [(1, 1), (3, 4)]


def test_excluded_hits_do_not_use_up_top_k_places():
    indices = [3, 1, 2]
    distances = [0.0, 0.1, 0.2]
    refs = select_references(distances, indices, BINS, top_k=2, exclude=[True, False, False])
    assert [r.index for r in refs] == [1, 2]


def test_empty_slots_and_ties():
    refs = select_references([0.5, 0.5, 0.1, np.inf], [4, 3, -1, 0], BINS, top_k=50)
    assert [(r.bin, r.index) for r in refs] == [(3, 3)]  # same distance: the lower bank row wins
    assert select_references([0.1], [-1], BINS) == []


def test_selection_errors_name_the_choices():
    with pytest.raises(ConfigError, match="quality, distance"):
        select_references([0.1], [0], BINS, order="random")
    with pytest.raises(ConfigError, match="top_k"):
        select_references([0.1], [0], BINS, top_k=0)
    with pytest.raises(ConfigError, match="outside the bank"):
        select_references([0.1], [99], BINS)


def test_self_hits_by_distance_or_identity():
    d = [0.0, 1e-6, 0.3, 0.5]
    assert self_hits(d, 1.0).tolist() == [True, True, False, False]
    assert self_hits(d, 1.0, same_item=[False, False, False, True]).tolist() == [True, True, False, True]
    assert self_hits(d, 1.0, rel_tol=0.0).tolist() == [True, False, False, False]


# --------------------------------------------------------------------------- cache


def _img(w: int, h: int) -> Image.Image:
    return Image.new("RGB", (w, h))


def test_lru_evicts_by_count_and_bytes():
    cache = ImageLRU(max_items=2, max_bytes=10_000)
    loads = []

    def loader(name, size):
        def load():
            loads.append(name)
            return _img(*size)

        return load

    cache.get_or_load("a", loader("a", (10, 10)))  # 300 bytes
    cache.get_or_load("b", loader("b", (10, 10)))
    cache.get_or_load("a", loader("a", (10, 10)))  # hit; a is now the most recent
    cache.get_or_load("c", loader("c", (10, 10)))  # evicts b (least recently used)
    assert "a" in cache and "c" in cache and "b" not in cache
    assert loads == ["a", "b", "c"]
    cache.get_or_load("big", loader("big", (60, 55)))  # 9900 bytes: a (count) and c (bytes) must go
    assert "big" in cache and len(cache) == 1
    cache.get_or_load("huge", loader("huge", (100, 100)))  # larger than the cache: returned, not kept
    assert "huge" not in cache
    st = cache.stats
    assert (st.hits, st.misses, st.entries, st.bytes) == (1, 5, 1, 9900)
    assert st.evictions == 3


def test_lru_disabled_and_failing_loads_are_not_cached():
    off = ImageLRU(max_items=0)
    off.get_or_load("a", lambda: _img(4, 4))
    assert len(off) == 0
    cache = ImageLRU()

    def boom():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.get_or_load("x", boom)
    assert "x" not in cache
    with pytest.raises(ConfigError):
        ImageLRU(max_items=-1)


def test_max_refs_keeps_the_nearest_per_bin_picks():
    indices = [0, 1, 2, 3, 4, 5, 6, 7]
    distances = [0.9, 0.1, 0.5, 0.3, 0.2, 0.8, 0.4, 0.7]
    # per-bin picks: rows 1 (0.1), 4 (0.2), 6 (0.4), 2 (0.5), 7 (0.7); P = 3 keeps the nearest three
    refs = select_references(distances, indices, BINS, top_k=50, max_refs=3)
    assert [(r.bin, r.index) for r in refs] == [(1, 1), (3, 4), (5, 6)]
    assert select_references(distances, indices, BINS, max_refs=5) == select_references(distances, indices, BINS)
    with pytest.raises(ConfigError, match="max_refs"):
        select_references(distances, indices, BINS, max_refs=0)
