#!/usr/bin/env python3
"""Per-kernel table of one decode step from an Nsight Compute CSV (docs/PERF.md, issue 16).

Usage: ncu-decode-step.py NCU.csv [STEP]

NCU.csv is what `ncu --csv --log-file NCU.csv --metrics gpu__time_duration.sum,dram__bytes_read.sum
tandem bench model ... --placement '*=cuda:0'` wrote (`STEPS="build ncu" scripts/device-verify.sh`), run with
TANDEM_CUDA_GRAPHS=0 so that ncu sees each launch. A step begins at the embedding lookup (a
dequantize_kernel reading token ids, one block per token): STEP counts steps back from the last
complete one (default 1, the last). Prints the kernels of that step grouped by name and launch
shape, slowest first: calls, total µs, µs per call, MB read per call, GB/s.
"""
import collections
import csv
import re
import sys


def read_kernels(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own messages come first
    kernels = {}
    for row in csv.DictReader(lines):
        k = kernels.setdefault(int(row["ID"]), {"name": row["Kernel Name"], "grid": row["Grid Size"],
                                                  "block": row["Block Size"]})
        try:
            k[row["Metric Name"]] = float(row["Metric Value"].replace(",", ""))
        except ValueError:
            pass
    return kernels


def short(name):
    name = re.sub(r"\((const |float|int|unsigned|long|char|tandem|ExpertTable|PagedKv|RouterSpec).*", "", name)
    for noise in ("void ", "(anonymous namespace)::", "unnamed>::", "tandem::cuda::", "detail::"):
        name = name.replace(noise, "")
    return name


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    kernels = read_kernels(sys.argv[1])
    back = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    ids = sorted(kernels)
    starts = [i for i in ids if "dequantize_kernel" in kernels[i]["name"] and "const int *" in kernels[i]["name"]
              and kernels[i]["grid"].startswith("(1,")]
    if len(starts) < back + 1:
        sys.exit(f"{sys.argv[1]}: {len(starts)} one-token embedding lookups, need {back + 1}")
    first, end = starts[-back - 1], starts[-back]
    step = [i for i in ids if first <= i < end]
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for i in step:
        k = kernels[i]
        g = groups[f"{short(k['name'])} {k['grid']}x{k['block']}"]
        g[0] += 1
        g[1] += k.get("gpu__time_duration.sum", 0) / 1e3
        g[2] += k.get("dram__bytes_read.sum", 0)
    total = sum(g[1] for g in groups.values())
    print(f"{len(step)} kernels, {total:.1f} us")
    for name, (n, us, read) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"{n:4d} {us:9.1f} us {us / n:8.2f} us/call {read / 1e6 / n:9.3f} MB {read / (us * 1e3) if us else 0:7.1f} GB/s  {name}")


if __name__ == "__main__":
    main()
