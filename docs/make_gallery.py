"""Draw the pattern gallery of the documentation with ``foveate show``.

Writes ``docs/img/gallery/*.png`` and ``docs/gallery.md`` (run from the repository root:
``python docs/make_gallery.py``). Every figure is the command printed beside it.
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent
OUT = ROOT / "img" / "gallery"

#: (file name, title, what it shows, arguments of ``foveate show``)
ENTRIES = [
    ("causal", "Causal", "Causal attention: the mask beside its block layout (partial blocks on the "
     "diagonal, full blocks below).", "causal --len 2048"),
    ("sliding", "Sliding window", "`P.SlidingWindow(255)`: each query sees itself and the 255 keys before it.",
     "sliding --left 255 --len 2048"),
    ("sinks", "Sinks", "`P.Sinks(64)`: the first 64 keys, seen by every query (combine with a window for "
     "StreamingLLM: `P.SlidingWindow(255) | P.Sinks(4)`).", "sinks --n 64 --len 2048"),
    ("documents", "Packed documents", "`P.Documents([300, 80, 700, 968])`: causal inside each document, nothing "
     "across (varlen attention in one call).", "documents --lengths 300 80 700 968"),
    ("prefix-lm", "Prefix LM", "`P.PrefixLM(512)`: a bidirectional prefix, causal after it.",
     "prefix-lm --prefix 512 --len 2048"),
    ("chunk-causal", "Chunk-causal", "`P.ChunkCausal(384)`: the keys of the query's chunk and of earlier chunks "
     "(frame-by-frame video generation).", "chunk-causal --chunk 384 --len 2048"),
    ("power", "PowerAttention", "`P.PowerAttention(block=64, window=3, sink=1)`: a sink block, local blocks and "
     "blocks at power-of-two distances.", "power --block 64 --window 3 --sink 1 --len 2048"),
    ("strided-heads", "Strided heads (S2-Attention)", "`P.StridedHeads(block=64, local=8, vertical=8, kv_heads=4)`: "
     "local blocks and a strided shard of key blocks that differs per head.",
     "strided-heads --block 64 --local 8 --vertical 8 --kv-heads 4 --len 2048"),
    ("neighborhood-2d", "2-D neighborhood", "`P.Neighborhood((64, 64), (17, 17))`: one query's keys, the layout "
     "in raster order and in the tiled order the simulator chooses.", "neighborhood --canvas 64 64 --kernel 17 17"),
    ("neighborhood-2d-strided", "2-D strided neighborhood", "`stride=(8, 8)`: queries of an 8x8 group share one "
     "window (blocked attention at `stride == kernel`).",
     "neighborhood --canvas 64 64 --kernel 24 24 --stride 8 8"),
    ("neighborhood-3d", "3-D neighborhood (video)", "`P.Neighborhood((8, 32, 32), (3, 9, 9))`: one panel per frame "
     "that holds keys of the query.", "neighborhood --canvas 8 32 32 --kernel 3 9 9"),
    ("windows-shifted", "Shifted windows (Swin)", "`P.Windows((32, 32), 8, shift=4)`: non-overlapping windows "
     "moved by half a window, with Swin's region mask at the borders (`cyclic=True` wraps them instead).",
     "windows --canvas 32 32 --window 8 --shift 4"),
    ("axial", "Axial", "`P.Axial((32, 32), axes=(1,))`: each query sees its row.", "axial --canvas 32 32 --axes 1"),
    ("grid", "Grid (MaxViT)", "`P.Grid((32, 32), 4)`: keys at the same position modulo 32 / 4 on every axis (a "
     "dilated neighborhood).", "grid --canvas 32 32 --grid 4"),
    ("halo", "Halo (HaloNet)", "`P.Halo((32, 32), block=8, halo=2)`: 8x8 query blocks see their block and a halo "
     "of 2, clipped at the borders.", "halo --canvas 32 32 --block 8 --halo 2"),
    ("tile-neighborhood", "Sliding Tile Attention", "`P.TileNeighborhood((8, 32, 32), tile=(2, 8, 8), window=(3, 3, "
     "3))`: a neighborhood on the grid of tiles; in the tiled order every visited block is full.",
     "tile-neighborhood --canvas 8 32 32 --tile-shape 2 8 8 --window 3 3 3"),
    ("circular", "Circular windows (CLEAR)", "`P.Circular((32, 32), 6.5)`: keys within a Euclidean radius, "
     "truncated at the borders.", "circular --canvas 32 32 --radius 6.5"),
    ("radial", "Radial attention (video)", "`P.Radial(8, 1024)`: 8 frames of 1024 tokens; frame 0 a sink, the "
     "near frames whole (Wan: the next half), farther frames in bands that halve with each power-of-two "
     "distance (Radial Attention's released mask).", "radial --frames 8 --tokens-per-frame 1024"),
    ("cross-scale", "Cross-scale windows (MVAR)", "`P.CrossScale((16, 16), (32, 32), kernel=7)`: queries on a "
     "16x16 canvas, each seeing a 7x7 window of a 32x32 key canvas around its scaled position.",
     "cross-scale --q-canvas 16 16 --kv-canvas 32 32 --kernel 7 7"),
    ("with-text", "Text beside a canvas", "`P.WithText(P.Neighborhood((24, 24), (7, 7)), 100)`: a neighborhood "
     "plus 100 global text tokens after it (HunyuanVideo's joint attention; `first=True` puts them before, as "
     "CogVideoX does).", "neighborhood --canvas 24 24 --kernel 7 7 --text 100"),
    ("moba", "MoBA (content-selected blocks)", "`P.MoBA(block=256, topk=3)` on synthetic inputs with planted key "
     "blocks: the blocks each query block selects, per head.",
     "moba --block 256 --topk 3 --len 4096"),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["# Pattern gallery", "",
             "Drawn by `foveate show` (`python docs/make_gallery.py` redraws them). Orange blocks are partial "
             "(the kernels mask inside them), dark blue blocks full (no mask work), empty blocks are skipped.", ""]
    for name, title, text, args in ENTRIES:
        path = OUT / f"{name}.png"
        cmd = [sys.executable, "-m", "foveate", "show", *shlex.split(args), "--out", str(path)]
        subprocess.run(cmd, check=True, capture_output=True)
        lines += [f"## {title}", "", text, "", f"```bash\nfoveate show {args}\n```", "",
                  f"![{title}](img/gallery/{name}.png)", ""]
    (ROOT / "gallery.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
