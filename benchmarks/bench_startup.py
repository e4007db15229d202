"""CLI start-up: ``diffusionsat --help`` / ``--version`` / ``generate --help`` against ``import torch``.

    python benchmarks/bench_startup.py                     # this checkout's src/
    python benchmarks/bench_startup.py --src OTHER/src     # another source tree (e.g. an older commit)

Each command runs in a fresh interpreter, interleaved with ``python -c "import torch"``, ``--repeats``
times; the report gives medians and each command's time as a ratio to importing torch, so that it
holds on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {"--help": ["--help"], "--version": ["--version"], "generate --help": ["generate", "--help"]}


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.src)}
    times: dict[str, list[float]] = {"import torch": [], **{name: [] for name in COMMANDS}}
    for _ in range(args.repeats):
        times["import torch"].append(timed([sys.executable, "-c", "import torch"], env))
        for name, argv in COMMANDS.items():
            times[name].append(timed([sys.executable, "-m", "diffusionsat", *argv], env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_time = medians["import torch"]
    report = {name: {"median_s": round(value, 3), "ratio_to_import_torch": round(value / torch_time, 3)}
              for name, value in medians.items()}
    print(json.dumps({"src": str(args.src), "repeats": args.repeats, "results": report}, indent=2))


if __name__ == "__main__":
    main()
