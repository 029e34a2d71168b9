"""Cost of the token permutation that tiling adds around attention (GPU).

For each canvas: ``TiledOrder.tile_tokens`` / ``untile_tokens`` (reshape + permute copies)
against ``index_select`` with the permutation indices, and a plain ``clone`` of the same
bytes (the memory-bandwidth ceiling), bf16, D=128.

Usage: ``python benchmarks/permutation.py``.
"""

from __future__ import annotations

import torch
import triton.testing as tt

from foveate.tiling import TiledOrder

CASES = [((256, 256), (8, 16), 24), ((128, 128), (8, 16), 16), ((30, 48, 80), (2, 8, 8), 1),
         ((16, 64, 64), (4, 4, 8), 16)]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/permutation.py needs a CUDA GPU")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, D=128; GB = bytes read + written")
    for canvas, tile, heads in CASES:
        order = TiledOrder(canvas, tile)
        x = torch.randn(1, heads, order.num_canvas, 128, device="cuda", dtype=torch.bfloat16)
        tiled_to_raster, raster_to_tiled = order.permutation("cuda")
        xt = order.tile_tokens(x)
        if not order.has_padding:
            assert torch.equal(x.index_select(2, tiled_to_raster), xt)
        gb = 2 * x.numel() * x.element_size() / 1e9
        ms = {
            "tile_tokens": tt.do_bench(lambda: order.tile_tokens(x), return_mode="median"),
            "index_select": tt.do_bench(lambda: x.index_select(2, tiled_to_raster.clamp(min=0)), return_mode="median"),
            "untile_tokens": tt.do_bench(lambda: order.untile_tokens(xt), return_mode="median"),
            "clone": tt.do_bench(lambda: x.clone(), return_mode="median"),
        }
        print(f"{canvas} tile {tile} H={heads}, {gb:.2f} GB: "
              + ", ".join(f"{k} {v:.3f} ms ({gb / v:.2f} TB/s)" for k, v in ms.items()))


if __name__ == "__main__":
    main()
