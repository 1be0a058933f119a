#!/usr/bin/env python3
"""Fails when the top-level modules of src/ (the library crate) depend on each other in a cycle,
or when a file under src/ has more than 600 lines before its `#[cfg(test)]` part.

A module's dependencies are the `crate::NAME` references in its files, outside their
`#[cfg(test)]` part (tests may reach anywhere). The binary's modules (`main.rs`, `cmd/`) sit above
the library and are not part of the graph. Prints the graph in layers, or the cycles found.

Usage: python3 scripts/check-modules.py [SRC_DIR]
"""
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
BINARY_ONLY = {"main", "cmd"}
MAX_LINES = 600
REF = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` groups name several modules at once.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(path):
    rel = os.path.relpath(path, SRC)
    head = rel.split(os.sep)[0]
    return head[:-3] if head.endswith(".rs") else head


def code_before_tests(text):
    """The text of a file up to its `#[cfg(test)]` module, comments removed."""
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def long_files():
    """Files under src/ (binary included) with more than MAX_LINES lines before their tests."""
    out = []
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                cut = text.find("#[cfg(test)]")
                n = len((text[:cut] if cut >= 0 else text).splitlines())
                if n > MAX_LINES:
                    out.append((os.path.relpath(path, os.path.join(SRC, "..")), n))
    return sorted(out)


def main():
    too_long = long_files()
    for path, n in too_long:
        print(f"{path}: {n} lines before its tests (at most {MAX_LINES}); split it along its concepts")
    graph = {}
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            module = module_of(path)
            if module in BINARY_ONLY or module == "lib":
                continue
            with open(path, encoding="utf-8") as fh:
                code = code_before_tests(fh.read())
            deps = graph.setdefault(module, set())
            for group in GROUP.findall(code):
                for item in group.split(","):
                    item = item.strip().split("::")[0].strip()
                    if item and item != "self":
                        deps.add(item)
            deps.update(REF.findall(code))
            deps.discard(module)
    for deps in graph.values():
        deps.intersection_update(graph.keys())

    # Tarjan's strongly connected components: any component with more than one module is a cycle.
    index, low, stack, on_stack, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = [c for c in comps if len(c) > 1]
    if cycles:
        for c in cycles:
            print("module cycle: " + " <-> ".join(c))
            for m in c:
                inside = sorted(d for d in graph[m] if d in c)
                print(f"  {m} uses {', '.join(inside)}")
        return 1
    if too_long:
        return 1
    # Layers: a module's layer is one more than the highest layer it uses.
    layer = {}

    def depth(m):
        if m not in layer:
            layer[m] = 1 + max((depth(d) for d in graph[m]), default=-1)
        return layer[m]

    for m in graph:
        depth(m)
    for level in sorted(set(layer.values()), reverse=True):
        mods = sorted(m for m in graph if layer[m] == level)
        print(f"layer {level}: " + ", ".join(f"{m} -> {{{', '.join(sorted(graph[m]))}}}" for m in mods))
    print(f"modules: {len(graph)}, cycles: 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
