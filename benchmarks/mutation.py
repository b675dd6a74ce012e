"""Mutation testing of adaclip's core modules (a benchmark-style tool: too slow for CI).

A small self-written AST mutator (no mutmut: its trampolines and its
whole-suite stats pass do not fit a JAX suite that takes 15+ minutes). Each
mutant changes one operator or constant of one module; the module's FAST test
files (``TESTS`` below) run against it with ``-x`` and a per-mutant timeout.
A mutant is killed when the tests fail (or time out), survived when they pass.
Mutants are sampled per module with a fixed seed (``--per-module``), so a run
fits a budget; the result names the sampling.

    PYTHONPATH=$PWD python benchmarks/mutation.py --per-module 12 --timeout 240
    PYTHONPATH=$PWD python benchmarks/mutation.py --list   # count mutation points only

Writes benchmarks/mutation.json (per module: killed / survived / total, and
each survivor's line and change). Works on any version of the modules: the
points are found from the source at run time.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = {
    "_numerics": ["tests/test_core_numerics.py", "tests/test_mutation_kills.py"],
    "_base": ["tests/test_rules_core.py"],
    "_ema_rules": ["tests/test_rules_core.py"],
    "_window_rules": ["tests/test_rules_core.py"],
    "_rolling_rules": ["tests/test_rules_rolling_zscore.py"],
    "_ema_zscore": ["tests/test_rules_core.py"],
    "_quantile": ["tests/test_rules_core.py"],
    "_combinators": ["tests/test_rules_core.py"],
    "_log_space": ["tests/test_rules_log_space.py"],
    "_schedule_rules": ["tests/test_rules_core.py"],
    "_clippers": ["tests/test_clippers_thresholds.py", "tests/test_clippers_properties.py"],
    "_skip": ["tests/test_skip.py", "tests/test_skip_references.py"],
}
SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip
NAMES = {"maximum": "minimum", "minimum": "maximum", "where": "where"}


def points(tree: ast.AST) -> list[tuple[int, str, ast.AST]]:
    """Mutation points: (line, description, node), in source order; docstrings skipped."""
    out = []
    for node in ast.walk(tree):
        op = getattr(node, "op", None)
        if isinstance(node, ast.BinOp | ast.BoolOp) and type(op) in SWAPS:
            out.append((node.lineno, f"{type(op).__name__} -> {SWAPS[type(op)].__name__}", node))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in SWAPS:
            new = SWAPS[type(node.ops[0])].__name__
            out.append((node.lineno, f"{type(node.ops[0]).__name__} -> {new}", node))
        elif isinstance(node, ast.Attribute) and NAMES.get(node.attr, "where") != "where":
            out.append((node.lineno, f".{node.attr} -> .{NAMES[node.attr]}", node))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            out.append((node.lineno, f"{node.value!r} -> {node.value + 1!r}", node))
    return sorted(out, key=lambda p: (p[0], p[1]))


def mutate(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp | ast.BoolOp):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = SWAPS[type(node.ops[0])]()
    elif isinstance(node, ast.Attribute):
        node.attr = NAMES[node.attr]
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(TESTS))
    parser.add_argument("--per-module", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "mutation.json"))
    args = parser.parse_args()
    result = {"sampling": f"{args.per_module} per module, seed {args.seed}", "modules": {}}
    start = time.time()
    for module in args.modules:
        source = (ROOT / "adaclip" / f"{module}.py").read_text()
        found = points(ast.parse(source))
        if args.list:
            print(f"{module}: {len(found)} mutation points")
            continue
        chosen = sorted(
            random.Random(args.seed).sample(range(len(found)), min(args.per_module, len(found)))
        )
        entry = {"points": len(found), "killed": 0, "survived": 0, "survivors": []}
        for k in chosen:
            tree = ast.parse(source)
            line, what, node = points(tree)[k]
            mutate(node)
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(ROOT / "adaclip", pathlib.Path(tmp) / "adaclip")
                shutil.copytree(ROOT / "tests", pathlib.Path(tmp) / "tests")
                (pathlib.Path(tmp) / "adaclip" / f"{module}.py").write_text(ast.unparse(tree))
                cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
                try:
                    env = {"PYTHONPATH": tmp, "PATH": "/usr/bin:/bin"}
                    rc = subprocess.run(
                        cmd + TESTS[module], cwd=tmp, env=env, capture_output=True,
                        timeout=args.timeout,
                    ).returncode  # fmt: skip
                except subprocess.TimeoutExpired:
                    rc = -1  # a mutant that hangs is caught by the timeout: killed
            if rc == 0:
                entry["survived"] += 1
                entry["survivors"].append(f"line {line}: {what}")
            else:
                entry["killed"] += 1
            print(f"{module} line {line} {what}: {'SURVIVED' if rc == 0 else 'killed'}", flush=True)
        entry["total"] = entry["killed"] + entry["survived"]
        result["modules"][module] = entry
    if not args.list:
        killed = sum(e["killed"] for e in result["modules"].values())
        total = sum(e["total"] for e in result["modules"].values())
        result.update(killed=killed, total=total, minutes=round((time.time() - start) / 60, 1))
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"killed {killed}/{total} in {result['minutes']} min")


if __name__ == "__main__":
    main()
