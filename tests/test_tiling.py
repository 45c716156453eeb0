"""darl_core.models.tiling: tiles that cover the image with less work, blended without seams."""

import torch

from darl_core.models.tiling import STRETCH, tile_layout, tile_starts, tiled_apply


def test_tile_starts_cover_the_image() -> None:
    for n, tile, ov in [(100, 32, 8), (64, 64, 8), (33, 16, 4), (1000, 256, 32)]:
        starts = tile_starts(n, tile, ov)
        assert starts[0] == 0 and starts[-1] + min(tile, n) == n
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))


def test_tile_layout_covers_with_less_work_and_keeps_the_overlap() -> None:
    for n in list(range(40, 700, 7)) + [1200, 1600, 2048, 4000]:
        for tile, ov, m in [(256, 32, 8), (256, 32, 16), (96, 32, 8), (64, 8, 8)]:
            n_pad = n + (-n) % m  # the pipelines pad sides to their multiple first
            starts, size = tile_layout(n_pad, tile, ov, m)
            assert starts[0] == 0 and starts[-1] + size == n_pad and starts == sorted(starts)
            assert all(b - a <= size - ov for a, b in zip(starts, starts[1:])), (n_pad, tile, starts, size)
            assert size % m == 0 and size <= max(tile * (1 + STRETCH), min(tile, n_pad))
            nominal = len(tile_starts(n_pad, tile, ov)) * min(tile, n_pad)
            assert len(starts) * size <= nominal
    # 1200 px in 5 tiles of 272 instead of 6 of 256 (11 % fewer pixels); no stretch: the nominal tiles
    assert tile_layout(1200, 256, 32, 8) == ([0, 232, 464, 696, 928], 272)
    assert tile_layout(1200, 256, 32, 8, stretch=0.0) == (tile_starts(1200, 256, 32), 256)
    assert tile_layout(304, 256, 32, 8) == ([0], 304)  # within the stretch: one tile, untiled


def test_tiled_apply_of_a_local_op_matches_everywhere() -> None:
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        full, tiled = conv(x), tiled_apply(conv, x, 32, 8)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    # only the 1-px tile borders differ (zero padding inside a tile); blending hides them
    assert float((full - tiled)[inner].abs().mean()) < 0.02
