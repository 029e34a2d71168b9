"""What grouped-query attention's shared keys and values cost the triton kernels (GPU).

The kernels run one program per (query block, batch x query head) and map query head ``h``
to kv head ``h // group``: the query heads of a group each read the group's keys and values,
and rely on the L2 cache to share those reads. Packing a group's heads into one program (kv
read once per group) would pay where that reading is what a call costs. This times
``foveate.attention`` (bf16, D=128, triton backend; forward, and forward+backward where the
problem is large enough to train on) with the same query heads and fewer kv heads, on prefill
shapes (8K and 32K tokens) and on short query blocks against long keys (256 and 16 queries, 32K
keys); ``do_bench``, same run. Equal times at every group size mean that the kv reads are
not what the kernels wait on.

Usage: ``python benchmarks/gqa.py``.
"""

from __future__ import annotations

import torch

import foveate
from foveate import patterns as P

from common import bench_ms, fwd_bwd, run_header

CASES = [  # name, pattern, query heads, query tokens, kv tokens, kv head counts, backward
    ("dense 8K", None, 16, 8192, 8192, (16, 4, 2, 1), True),
    ("sliding 2047, 32K", P.SlidingWindow(2047), 16, 32768, 32768, (16, 2, 1), True),
    ("256 queries, 32K keys", None, 32, 256, 32768, (32, 8, 4, 1), False),
    ("16 queries, 32K keys", None, 32, 16, 32768, (32, 8, 4, 1), False),
]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gqa.py needs a CUDA GPU")
    print(f"{run_header()}, bf16, B=1, D=128, triton backend; ms by kv heads (ratio to as many kv heads as query heads)")
    for name, pattern, heads, q_len, kv_len, kv_heads, backward in CASES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, grad = (torch.randn(1, heads, q_len, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(2))
        rows = {"forward": [], "forward+backward": []} if backward else {"forward": []}
        for hkv in kv_heads:
            k, v = (torch.randn(1, hkv, kv_len, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
                    for _ in range(2))

            def attend(q, k, v):
                return foveate.attention(q, k, v, pattern, backend="triton")

            rows["forward"].append((hkv, bench_ms(lambda: attend(q, k, v))))
            if backward:
                qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
                rows["forward+backward"].append((hkv, bench_ms(fwd_bwd(attend, qg, kg, vg, grad))))
        for direction, times in rows.items():
            base = times[0][1]
            cells = "   ".join(f"Hkv={hkv:<2d} {ms:8.3f} ({base / ms:.3f}x)" for hkv, ms in times)
            print(f"{name:24s} Hq={heads:<2d} {direction:17s} {cells}", flush=True)


if __name__ == "__main__":
    main()
