"""Store benchmark: the registered ``noise`` generator (32 px RGB) fills a store from a plan of N items.

    python bench/store.py                          # 1 k and 10 k items, 1 and 2 processes
    python bench/store.py --sizes 1000 10000 100000 --processes 1 2

For every size and process count a fresh store is filled in fresh processes, and the script prints items/s,
the peak RSS of the (rank-0) process, and the time to open the finished store (from its index, and with
``verify=True``, which parses and checks every line). Two processes run under ``accelerate launch
--multi_gpu --num_processes 2`` with ``ACCELERATE_USE_CPU=1`` (gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = 100


def child(n: int, root: Path, sync_every: int) -> None:
    """Fills ``root`` with ``n`` noise images (under accelerate: this rank's share); rank 0 prints a JSON line."""
    from synthaug.data import LabelSchema
    from synthaug.generators import create_generator, fill_store
    from synthaug.plan import make_items
    from synthaug.store import SyntheticStore, open_store

    processes = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        processes = PartialState(cpu=True)
    schema = LabelSchema.single([f"c{i:03d}" for i in range(CLASSES)], name="class")
    items = make_items(schema, [n // CLASSES] * CLASSES, seed=0)
    gen = create_generator("noise", {"image_size": 32, "channels": 3}, schema)
    store = SyntheticStore(root, schema, sync_every=sync_every)
    start = time.perf_counter()
    fill_store(gen, items, store, batch_size=256, progress=False, processes=processes)
    seconds = time.perf_counter() - start
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # before the open timings
    if processes is not None and not processes.is_main_process:
        return
    t = time.perf_counter()
    opened = len(open_store(root))
    open_index = time.perf_counter() - t
    t = time.perf_counter()
    open_store(root, verify=True).open(repair=False)
    open_verify = time.perf_counter() - t
    print(json.dumps({"items": n, "listed": opened, "seconds": round(seconds, 2), "items_per_s": round(n / seconds),
                      "peak_rss_mb": peak_rss_mb,
                      "open_index_s": round(open_index, 3), "open_verify_s": round(open_verify, 3)}), flush=True)


def run(n: int, processes: int, sync_every: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"bench-store-{n}-"))
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
        cmd = [sys.executable, __file__, "--child", str(n), "--root", str(root), "--sync-every", str(sync_every)]
        if processes > 1:
            accelerate = Path(sys.executable).with_name("accelerate")
            cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *cmd[1:]]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return {"processes": processes, **json.loads(out.strip().splitlines()[-1])}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sync-every", type=int, default=256)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.root, args.sync_every)
        return 0
    print("| processes | items | items/s | peak RSS (MB, rank 0) | open from index (s) | open, verify every line (s) |")
    print("|---|---|---|---|---|---|")
    for processes in args.processes:
        for n in args.sizes:
            r = run(n, processes, args.sync_every)
            print(f"| {processes} | {n:,} | {r['items_per_s']:,} | {r['peak_rss_mb']} | {r['open_index_s']} | "
                  f"{r['open_verify_s']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
