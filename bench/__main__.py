"""``python -m bench [--scale F] [--only NAME] [--repeats N]``: run the benchmarks, print a
table of Lakeforge vs baseline times and their ratio, write ``bench/results/<name>.json``."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    bronze_load,
    cdc_apply,
    cdc_source,
    checks,
    http_push,
    ingest,
    merge,
    nats_ingest,
    pipeline,
    plan,
    windowed,
)

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        bronze_load,
        merge,
        cdc_apply,
        cdc_source,
        pipeline,
        checks,
        ingest,
        nats_ingest,
        http_push,
        plan,
        windowed,
    )
}
TARGET_RATIO = 1.3  # unless a benchmark module sets its own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="data size factor (default 1)")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="run only")
    parser.add_argument(
        "--repeats", type=int, default=None, help="measurements per path (default per benchmark)"
    )
    parser.add_argument("--results-dir", type=Path, default=None, help="default bench/results")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a tmp dir)")
    args = parser.parse_args(argv)
    if args.scale <= 0 or (args.repeats is not None and args.repeats < 1):
        parser.error("--scale must be > 0 and --repeats >= 1")
    names = args.only or list(BENCHMARKS)
    results = []
    for name in names:
        module = BENCHMARKS[name]
        repeats = args.repeats or module.DEFAULT_REPEATS
        print(f"{name} (scale {args.scale:g}, {repeats} repeats)", flush=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"lakeforge-bench-{name}-", dir=args.workdir))
        try:
            result = module.run(args.scale, repeats, workdir=scratch, results_dir=args.results_dir)
            results.append({"benchmark": name, **result})
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(results)
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'benchmark':<12} {'lakeforge s':>12} {'baseline s':>11} {'ratio':>7} {'best':>7}  size"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        target = getattr(BENCHMARKS[r["benchmark"]], "TARGET_RATIO", TARGET_RATIO)
        flag = "" if r["ratio_median"] <= target else f"  (> {target} target)"
        print(
            f"{r['benchmark']:<12} {r['lakeforge_median']:>12.3f} {r['baseline_median']:>11.3f} "
            f"{r['ratio_median']:>7.2f} {r['ratio_best']:>7.2f}  {r['description']}{flag}"
        )
    print("\ntimes are medians; ratio = lakeforge / baseline (median), best = ratio of minima")
    for r in results:
        gx = r.get("gx")
        if gx and "skipped" in gx:
            print(f"  {r['benchmark']}: Great Expectations skipped: {gx['skipped']}")
        elif gx:
            print(
                f"  {r['benchmark']}: Great Expectations {gx['seconds']:.1f} s, Lakeforge "
                f"{gx['speedup']}x faster ({gx['speedup_without_gx_read']}x without GX's "
                f"read into pandas; {gx['speedup_gx_without_relationships']}x with GX running "
                "only the 19 other checks)"
            )
    for r in results:
        for note in r.get("notes", []):
            print(f"  {r['benchmark']}: {note}")
    for r in results:
        print(f"  {r['path']}")


if __name__ == "__main__":
    sys.exit(main())
