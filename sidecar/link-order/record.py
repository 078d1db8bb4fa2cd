"""Turns callgrind dumps of sidecar runs into hot-functions.txt (see README.md).

Each run left one file per 5 s (callgrind.<pid>.<n>). What ran after STEADY_AFTER
seconds is a round's code; what ran only before it is start-up. The list holds the
rounds' functions first, then start-up's, each in this build's address order, as
"<symbol>\t<key>" lines (symbols.awk's columns).
"""

import collections
import pathlib
import re
import sys

DUMP_SECONDS = 5
STEADY_AFTER = 40


def functions_in(path):
    names = set()
    with open(path, errors="replace") as dump:
        for line in dump:
            match = re.match(r"c?fn=\(\d+\)\s+(\S+)", line)
            if match:
                names.add(match.group(1))
    return names


def main(dumps, symbols_tsv, target, rustc):
    symbols = {}
    for line in open(symbols_tsv):
        address, size, symbol, key = line.rstrip("\n").split("\t")
        symbols[symbol] = (int(address, 16), int(size, 16), key)
    runs = collections.defaultdict(dict)
    for path in pathlib.Path(dumps).glob("callgrind.*.*"):
        _, pid, part = path.name.split(".")
        runs[pid][int(part)] = functions_in(path)
    if not runs:
        sys.exit("no callgrind dumps: did the sidecar run?")
    steady, start_up = set(), set()
    for parts in runs.values():
        if max(parts) * DUMP_SECONDS <= STEADY_AFTER + 15:
            sys.exit(f"a run lasted {max(parts) * DUMP_SECONDS} s: too short for steady rounds")
        for part, names in parts.items():
            (steady if part * DUMP_SECONDS > STEADY_AFTER else start_up).update(names)
    start_up -= steady

    def listed(names):
        known = sorted((symbols[n][0], n) for n in names if n in symbols)
        return [n for _, n in known], sum(symbols[n][1] for _, n in known)

    steady_list, steady_bytes = listed(steady)
    start_list, start_bytes = listed(start_up)
    text_bytes = sum(size for _, size, _ in symbols.values())
    print(f"# The sidecar's functions by when they run (sidecar/link-order/README.md).")
    print(f"# target: {target}")
    print(f"# rustc: {rustc}")
    print(f"# Rounds: {len(steady_list)} functions, {steady_bytes // 1024} KiB; start-up only: "
          f"{len(start_list)}, {start_bytes // 1024} KiB; all code: {text_bytes // 1024} KiB.")
    print("# rounds")
    for name in steady_list:
        print(f"{name}\t{symbols[name][2]}")
    print("# start-up")
    for name in start_list:
        print(f"{name}\t{symbols[name][2]}")
    print(f"rounds: {steady_bytes // 1024} KiB, start-up: {start_bytes // 1024} KiB", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
