#!/usr/bin/env python3
"""Checks the workspace's module layout: no two modules of a crate import each other (directly
or through others), and no source file over 600 lines without a reason in its opening comment.

A module's imports are its `crate::`, `super::` and `self::` paths outside its `#[cfg(test)]`
tail. Edges are counted between siblings under their nearest common parent: a child may use its
parent's items and a parent its children (that is what declaring a module is). Prints every
cycle and every long file; exits 1 if there is one."""
import os, re, sys

CRATES = ["proto/src", "core/src", "hub/src", "hub/cli/src", "quickstart/src", "spoke/src", "fuse/src",
          "e2e/src", "e2e/testkit/src"]
LONG = 600
REASON = re.compile(r"^//!.*\b(long|lines)\b", re.I | re.M)

def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            if rel in (["lib"], ["main"]) or rel[0] == "bin":
                rel = []
            if tuple(rel) in mods and rel == []:
                mods[tuple(rel)] += [path]
            else:
                mods[tuple(rel)] = [path]
    return mods

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)::((?:[A-Za-z_][A-Za-z0-9_]*::)*)\{([^;]*?)\}", re.S)

def code_of(path):
    text = open(path, encoding="utf-8").read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    text = text[: cut.start()] if cut else text
    text = re.sub(r"//[^\n]*", "", text)
    return text

def references(mod, text):
    refs = []
    def base(kind):
        if kind == "crate":
            return ()
        if kind == "self":
            return mod
        return mod[:-1]
    for m in GROUP.finditer(text):
        prefix = base(m.group(1)) + tuple(s for s in m.group(2).split("::") if s)
        for item in re.split(r"[,\s]+", m.group(3)):
            item = item.strip().split(" as ")[0]
            parts = tuple(p for p in item.replace("{", "").replace("}", "").split("::") if p and p != "self")
            if parts:
                refs.append(prefix + parts)
    for m in PATH.finditer(GROUP.sub("", text)):
        refs.append(base(m.group(1)) + tuple(s for s in m.group(2).split("::") if s))
    return refs

def resolve(ref, mods):
    for n in range(len(ref), -1, -1):
        if ref[:n] in mods:
            return ref[:n]
    return ()

def cycles(graph):
    found, seen = [], set()
    def dfs(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cyc = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append(cyc)
            elif len(stack) < 12:
                dfs(nxt, stack + [nxt])
    for node in sorted(graph):
        dfs(node, [node])
    return found

def main(root):
    bad = False
    for crate in CRATES:
        src = os.path.join(root, crate)
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        graph = {}
        for mod, paths in mods.items():
            for ref in (r for path in paths for r in references(mod, code_of(path))):
                target = resolve(ref, mods)
                n = 0
                while n < min(len(mod), len(target)) and mod[n] == target[n]:
                    n += 1
                if n == len(mod) or n == len(target):
                    continue  # the same module, its parent or its child
                a, b = mod[: n + 1], target[: n + 1]
                graph.setdefault(a, set()).add(b)
        for cyc in cycles(graph):
            bad = True
            print(f"{crate}: modules import each other: " + " -> ".join("::".join(m) for m in cyc))
        for path in sorted(p for paths in mods.values() for p in paths):
            text = open(path, encoding="utf-8").read()
            lines = text.count("\n")
            if lines > LONG and not REASON.search(text):
                bad = True
                print(f"{os.path.relpath(path, root)}: {lines} lines, and its opening comment gives no reason")
    return 1 if bad else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
