"""``foveate bench``: every available backend and the dense baselines on a suite of
(pattern, shape) cases, forward and forward+backward; a table, and a report folder with
``report.md``, ``results.json`` and PNG plots.

Without options it runs the GPU suite when CUDA is present (about 5 minutes on an H200, 2026-12-01),
else a small CPU suite (about a minute on 2 cores). Each backend's result is checked against
the reference backend before it is timed; a wrong result is reported as a failure.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark the backends against dense attention", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="auto", help="gpu, cpu or tiny (default: gpu with CUDA, else cpu)")
    p.add_argument("--cases", nargs="+", metavar="NAME", help="only the cases whose name contains NAME")
    p.add_argument("--list", action="store_true", help="list the suite's cases and exit")
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help="backends to run (default: all available; on CUDA without the reference)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    p.add_argument("--batch", type=_positive, help="override the batch size of every case")
    p.add_argument("--heads", type=_positive, help="override the head count of every case")
    p.add_argument("--len", type=_positive, dest="length", help="override the length of 1-D sequence cases")
    p.add_argument("--reps", type=_positive, default=5, help="timed repetitions on CPU (median)")
    p.add_argument("--rep-ms", type=_positive, default=100, help="milliseconds of timing per measurement on CUDA")
    p.add_argument("--timing", choices=["case", "eager", "gpu"], default="case",
                   help="eager: host and GPU time of each call; gpu: also the GPU work alone (calls replayed as a "
                        "CUDA graph), the lower of the two counting; case (default): each case's own (gpu for "
                        "host-bound cases)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--flex-dense", action="store_true",
                   help="also time FlexAttention on each case's dense (causal) problem, a second baseline")
    p.add_argument("--out", default="foveate-report", help="report folder (default: foveate-report/)")
    p.add_argument("--json", action="store_true", help="print the records as JSON on stdout (no table)")
    p.add_argument("--from-json", metavar="FILE", nargs="+",
                   help="run nothing: rebuild the table and report from the results.json of earlier runs "
                        "(several files: one report of all their records, e.g. a suite run in parts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import backends
    from ..benchmark.runner import default_backends, run_cases
    from ..benchmark.suites import select_cases

    if args.from_json:
        records = []
        for path in args.from_json:
            with open(path) as f:
                records += json.load(f)
        # Each run's own command, in order, once: a suite run in parts names every part.
        originals = list(dict.fromkeys(r.get("command", "foveate bench") for r in records)) or ["foveate bench"]
        sources = " ".join(args.from_json)
        return _report(records, args, f"{' ; '.join(originals)} (report rebuilt from {sources})")
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.split(":")[0] not in ("cuda", "cpu"):
        raise ValueError(f"--device {args.device!r}: expected cuda or cpu")
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    suite = args.suite if args.suite != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    cases = [c.resized(batch=args.batch, heads=args.heads, length=args.length)
             for c in select_cases(suite, args.cases)]
    if args.list:
        for c in cases:
            print(f"{c.name:24} {c.pattern!r} B={c.batch} H={c.heads} q_len={c.q_len} kv_len={c.kv_len} D={c.head_dim}")
        return 0
    names = args.backends or default_backends(device)
    for name in names:
        backends.get(name)  # unknown names fail here, before any work
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.timing == "gpu" and device.type != "cuda":
        raise ValueError("--timing gpu: GPU time is measured with CUDA graphs, and the device is not CUDA")

    with _progress(len(cases) * (len(names) + 1 + args.flex_dense), quiet=False) as step:
        records = run_cases(cases, names, dtype=dtype, device=device, backward=not args.no_backward,
                            reps=args.reps, rep_ms=args.rep_ms, flex_dense=args.flex_dense,
                            timing=None if args.timing == "case" else args.timing, progress=step)
    command = "foveate " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "foveate bench"
    for rec in records:
        rec["command"] = command
    return _report(records, args, command)


def _report(records: list[dict], args: argparse.Namespace, command: str) -> int:
    from ..benchmark.report import print_table, write_report

    paths = write_report(records, args.out, command)
    if args.json:
        json.dump(records, sys.stdout, indent=1, default=str)
        print()
    else:
        print_table(records)
        print(f"report: {', '.join(paths)}")
    failed = [r for r in records if r["status"] == "wrong"]
    return 1 if failed else 0


class _progress:
    """A progress bar on stderr (rich when installed, else one line per step)."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet

    def __enter__(self):
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:40}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("starting", total=self.total)
        except ImportError:
            self._bar = None
        self._done = -1
        return self.step

    def step(self, description: str) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, description=description)
        else:
            print(f"[{self._done + 1}/{self.total}] {description}", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)
            self._bar.stop()
