"""The longest functions of the project's packages (lines, nesting depth), longest first.

    python tools/longest_functions.py            # the top 10 of darl_core, ui and storage
    python tools/longest_functions.py -n 20 darl_core/train
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NESTING = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith, ast.Match)


def depth(node: ast.AST) -> int:
    """The deepest nesting of blocks inside ``node`` (a function's own body is depth 0)."""
    kids = [depth(c) + isinstance(c, NESTING) for c in ast.iter_child_nodes(node)
            if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return max(kids, default=0)


def functions(paths: list[Path]) -> list[tuple[int, int, str]]:
    out = []
    for root in paths:
        for f in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    out.append((node.end_lineno - node.lineno + 1, depth(node),
                                f"{f.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, default=[ROOT / "darl_core", ROOT / "ui", ROOT / "storage"])
    ap.add_argument("-n", type=int, default=10)
    args = ap.parse_args()
    print("| lines | depth | function |\n|---:|---:|---|")
    for lines, d, name in functions([p.resolve() for p in args.paths])[: args.n]:
        print(f"| {lines} | {d} | {name} |")


if __name__ == "__main__":
    main()
