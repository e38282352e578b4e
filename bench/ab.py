"""Same-run A/B of bench/ops.py between two checkouts, row by row.

    .venv/bin/python bench/ab.py --before /tmp/ab_before --after /work/main [--repeats 2]
        [--script after|own] [--kernels auto] [bench/ops.py arguments, e.g. --shapes "dw C960 7" --no-deform]

For every shape, ops.py runs in a subprocess per checkout (``--shapes`` one shape at a time,
its three spreads), with this Python (the same venv for both), ``PYTHONPATH`` and the working
folder set to that checkout, so each times its own ``acuzoo`` (each compiles its native
library on first use: the cache name includes the sources' folder). The two alternate,
before/after then after/before, for ``--repeats`` rounds, so that drift of the machine hits
both; every cell keeps its best. Arguments this script does not know go to ops.py unchanged,
so both sides run with the same allocator settings, rounds and budget.

``--script after`` (the default) runs the after checkout's bench/ops.py against both packages:
the same timing code and shapes on both sides, only the library differs (ops.py serves
``--kernels auto`` on a checkout older than the kernel plan). ``--script own`` runs each
checkout's own bench/ops.py (``--kernels`` or the older ``--paths``, found in its source); a
shape the before script does not know is then left out.

Prints per row the best forward and forward+backward of each side, after/before of the
forward+backward, the same ratio for the conv baseline (how far the machine drifted between
the two), the after side's plan, and last "slowest row: X.XX (shape, spread)".
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

Row = tuple[str, str]  # (shape, spread)


@dataclass
class Cell:
    fwd: float
    fb: float
    conv_fb: float
    picks: str

    def best_with(self, other: Cell | None) -> Cell:
        if other is None:
            return self
        return Cell(min(self.fwd, other.fwd), min(self.fb, other.fb), min(self.conv_fb, other.conv_fb), self.picks)


@dataclass
class Side:
    """One checkout and the ops.py that times it."""

    name: str
    tree: Path
    script: Path

    def flavour(self) -> tuple[str, bool]:
        """(the flag that takes ``auto``, whether the script writes --csv)."""
        source = self.script.read_text()
        return ("--kernels" if '"--kernels"' in source else "--paths"), '"--csv"' in source


def ops_shapes(script: Path) -> list[str]:
    """The shape names of an ops.py (its SHAPES table; importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location("ops_under_test", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.SHAPES)


def run_side(side: Side, python: str, kernel: str, shape: str, passthrough: list[str]) -> dict[Row, Cell]:
    """One subprocess of ops.py for one shape; its cells by (shape, spread)."""
    flag, writes_csv = side.flavour()
    csv_path = Path(tempfile.gettempdir(), f"acuzoo_ab_{os.getpid()}_{side.name}.csv")
    command = [python, str(side.script), flag, kernel, "--shapes", shape, *passthrough]
    if writes_csv:
        command += ["--csv", str(csv_path)]
    env = dict(os.environ, PYTHONPATH=str(side.tree))
    env.pop("ACUZOO_BENCH_ALLOCATOR", None)  # each child re-executes with the allocator asked for
    done = subprocess.run(command, cwd=side.tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        print(f"  {side.name}: ops.py failed on {shape!r} (exit {done.returncode}):\n{tail}", file=sys.stderr)
        return {}
    if writes_csv:
        cells = read_csv(csv_path.read_text(), kernel)
        csv_path.unlink()
        return cells
    return read_table(done.stdout, shape)


def read_csv(text: str, kernel: str) -> dict[Row, Cell]:
    cells = {}
    for r in csv.DictReader(io.StringIO(text)):
        if r["kernel"] == kernel and r["fb_ms"]:
            cells[r["shape"], r["spread"]] = Cell(
                float(r["fwd_ms"]), float(r["fb_ms"]), float(r["conv_fb_ms"]), r["picks"]
            )
    return cells


def read_table(stdout: str, shape: str) -> dict[Row, Cell]:
    """Rows of ops.py's printed table: shape, spread, conv fwd, conv f+b, fwd, x conv, f+b, ...,
    the plan's choice last."""
    cells = {}
    for line in stdout.splitlines():
        if not line.startswith(shape + " "):
            continue
        fields = line[len(shape) :].split()
        spread, conv_fb, fwd, fb = fields[0], float(fields[2]), float(fields[3]), float(fields[5])
        cells[shape, spread] = Cell(fwd, fb, conv_fb, fields[-1])
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="checkout before the change")
    parser.add_argument("--after", type=Path, required=True, help="checkout after the change")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each side per shape")
    parser.add_argument("--script", choices=["after", "own"], default="after", help="whose bench/ops.py times each")
    parser.add_argument("--kernels", default="auto", help="the one kernel spec compared (default: the plan's)")
    parser.add_argument("--shapes", nargs="+", help="ops.py shape names (default: all of the after script's)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of both sides")
    args, passthrough = parser.parse_known_args()
    before, after = args.before.resolve(), args.after.resolve()
    after_script = after / "bench" / "ops.py"
    sides = [
        Side("before", before, after_script if args.script == "after" else before / "bench" / "ops.py"),
        Side("after", after, after_script),
    ]
    shapes = args.shapes or ops_shapes(after_script)
    print(f"before: {before} ({sides[0].script}); after: {after} ({sides[1].script})")
    print(f"{args.repeats} alternated runs per side and shape; ops.py arguments: {' '.join(passthrough) or '-'}")
    header = (
        f"{'shape':<16}{'spread':>7}{'before fwd':>12}{'after fwd':>11}{'before f+b':>12}{'after f+b':>11}"
        f"{'after/before':>14}{'conv a/b':>10}  after picks"
    )
    print(header, flush=True)
    ratios: dict[Row, float] = {}
    for shape in shapes:
        best: list[dict[Row, Cell]] = [{}, {}]
        for repeat in range(args.repeats):
            order = (0, 1) if repeat % 2 == 0 else (1, 0)
            for i in order:
                for row, cell in run_side(sides[i], args.python, args.kernels, shape, passthrough).items():
                    best[i][row] = cell.best_with(best[i].get(row))
        for row in [*best[1], *(r for r in best[0] if r not in best[1])]:
            b, a = best[0].get(row), best[1].get(row)
            if a is None or b is None:
                print(f"{row[0]:<16}{row[1]:>7}  (measured on one side only)", flush=True)
                continue
            ratios[row] = a.fb / b.fb
            print(
                f"{row[0]:<16}{row[1]:>7}{b.fwd:>12.2f}{a.fwd:>11.2f}{b.fb:>12.2f}{a.fb:>11.2f}"
                f"{ratios[row]:>14.2f}{a.conv_fb / b.conv_fb:>10.2f}  {a.picks}",
                flush=True,
            )
    if ratios:
        worst = max(ratios, key=ratios.get)
        print(f"slowest row: {ratios[worst]:.2f} ({worst[0]}, {worst[1]})")
    else:
        print("no row measured on both sides")


if __name__ == "__main__":
    main()
