"""``make bench``: every benchmark, each printed as a table with its ceiling measured in the same run."""

from __future__ import annotations

import sys

from bench import agent_bench, instructions, server_bench, sink_bench


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main() -> int:
    print_table("server (issue: foundation)", server_bench.measure())
    if instructions.available():  # the same work counted, not timed: steady on a noisy machine
        print_table("server instructions per small append (callgrind)", instructions.measure())
    else:
        print("\nserver instructions: skipped (no valgrind)")
    print_table("tail-to-bucket (issue: the append sink)", sink_bench.measure())
    print_table("agent (issue: the agent)", agent_bench.measure())
    return 0


if __name__ == "__main__":
    sys.exit(main())
