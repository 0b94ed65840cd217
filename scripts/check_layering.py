#!/usr/bin/env python3
"""Checks that every #include of the source folders points the way the layering allows.

Run by the build (the kvserve_layering target, before any library compiles) and by ctest
(tests/scripts/). docs/layout.md describes the folders and the arrows; LAYERS below is the table
the check enforces. A wrong-way include is reported as `file:line: ...` with the include and what
the folder may include, and the exit status is 1.

Rules, for the C++ files (.h .cc .inc .cu .cuh) under kernels/, engine/, server/ and tools/:
  1. A quoted include of a repository path ("engine/kv/block_pool.h", "kvserve/v1/x.pb.h" is
     proto/) may only name the file's own folder or a folder that LAYERS lets it reach (the
     arrows are followed: a folder may include everything below it). tests/ and bench/ are never
     included from the source folders.
  2. kernels/ and engine/ include no gRPC, protobuf, Prometheus or yaml-cpp header (quoted or
     angled): the server turns engine data into those.
  3. A header ending in `_internal.h`, or a `.inc` file, is included only from its own directory.
  4. Every source file belongs to a folder of LAYERS (a new engine/ subfolder must be added to the
     table, with its arrows, before it builds).

usage: check_layering.py [--root DIR] [--stamp FILE] [--print-table]
"""

import argparse
import os
import re
import sys

# Folder -> the folders it includes directly. A folder may include anything reachable from it.
# engine/<sub> folders form a DAG, from the bottom up; server and tools take every engine folder.
LAYERS = {
    "kernels": [],
    "engine/common": [],
    "engine/tokenizer": ["engine/common"],
    "engine/kv": ["engine/common", "kernels"],
    "engine/sampling": ["engine/common", "kernels"],
    "engine/model": ["engine/kv", "engine/tokenizer"],
    "engine/chat": ["engine/model"],
    "engine/serving": ["engine/model", "engine/sampling"],
    "engine/runtime": ["engine/serving"],
    "engine/eval": ["engine/runtime"],
    "proto": [],
    "server": ["engine/*", "proto"],
    "tools": ["server"],
}

# Where each top-level path of a quoted include lives ("kvserve/v1/..." is generated from proto/).
INCLUDE_ROOTS = {"kvserve": "proto"}
TOP_FOLDERS = ("kernels", "engine", "server", "tools", "proto", "tests", "bench")
CHECKED_TOPS = ("kernels", "engine", "server", "tools")
SOURCE_SUFFIXES = (".h", ".cc", ".inc", ".cu", ".cuh")
# Headers the engine and the kernels never include (first path components).
FORBIDDEN_BELOW_SERVER = ("grpc", "grpcpp", "grpc++", "google/protobuf", "prometheus", "yaml-cpp",
                          "kvserve")

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*([<"])([^">]+)[">]')


def engine_folders():
    return sorted(f for f in LAYERS if f.startswith("engine/"))


def direct_deps(folder):
    out = []
    for dep in LAYERS[folder]:
        out.extend(engine_folders() if dep == "engine/*" else [dep])
    return out


def reachable(folder):
    """Every folder `folder` may include (itself excluded unless the table has a cycle)."""
    seen, stack = set(), list(direct_deps(folder))
    while stack:
        f = stack.pop()
        if f in seen:
            continue
        seen.add(f)
        stack.extend(direct_deps(f))
    return seen


def folder_of(path):
    """The LAYERS folder of a repository path, or None (engine/ has one folder per subfolder)."""
    parts = path.split("/")
    top = INCLUDE_ROOTS.get(parts[0], parts[0])
    if top == "engine":
        return "engine/" + parts[1] if len(parts) > 2 else "engine"
    return top


def table_errors():
    errors = []
    for folder in LAYERS:
        for dep in LAYERS[folder]:
            if dep != "engine/*" and dep not in LAYERS:
                errors.append(f"layering table: {folder} -> {dep}: unknown folder")
    if not errors:
        for folder in LAYERS:
            if folder in reachable(folder):
                errors.append(f"layering table: {folder} reaches itself (a cycle)")
    return errors


def check_file(root, rel):
    """Error lines for one source file (path relative to root, with forward slashes)."""
    errors = []
    folder = folder_of(rel)
    if folder not in LAYERS:
        return [f"{rel}:1: folder {folder} is not in the layering table of "
                f"scripts/check_layering.py; add it there (and to docs/layout.md) with its arrows"]
    allowed = reachable(folder) | {folder}
    below_server = folder == "kernels" or folder.startswith("engine/")
    own_dir = os.path.dirname(rel)
    with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            m = INCLUDE_RE.match(line)
            if not m:
                continue
            quoted, target = m.group(1) == '"', m.group(2)
            where = f"{rel}:{number}: "
            if below_server and any(target == p or target.startswith(p + "/")
                                    for p in FORBIDDEN_BELOW_SERVER):
                shown = f'"{target}"' if quoted else f"<{target}>"
                errors.append(where + f"{folder} includes {shown}: gRPC, protobuf, Prometheus "
                              f"and yaml-cpp headers stay in server/ and tools/")
                continue
            if not quoted:
                continue
            first = target.split("/")[0]
            if "/" not in target or (first not in TOP_FOLDERS and first not in INCLUDE_ROOTS):
                # A file beside this one ("common.cuh") or a third-party header ("absl/...").
                target_rel = os.path.normpath(os.path.join(own_dir, target)).replace(os.sep, "/")
                if "/" in target or not os.path.exists(os.path.join(root, target_rel)):
                    continue
            else:
                target_rel = target
            target_folder = folder_of(target_rel)
            if target_folder not in allowed:
                may = ", ".join(sorted(allowed - {folder})) or "nothing outside itself"
                errors.append(where + f'wrong-way include "{target}": {folder} -> {target_folder}'
                              f" is not allowed ({folder} may include: {may})")
                continue
            base = os.path.basename(target_rel)
            if ((base.endswith("_internal.h") or base.endswith(".inc")) and
                    os.path.dirname(target_rel) != own_dir):
                errors.append(where + f'"{target}" is private to {os.path.dirname(target_rel)}/ '
                              f"(_internal.h and .inc files are included only from their own "
                              f"folder)")
    return errors


def source_files(root):
    for top in CHECKED_TOPS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(SOURCE_SUFFIXES):
                    yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."),
                        help="the repository root (default: this script's parent folder)")
    parser.add_argument("--stamp", help="file to touch when the check passes (for the build)")
    parser.add_argument("--print-table", action="store_true",
                        help="print each folder and what it may include, then exit")
    args = parser.parse_args(argv)
    errors = table_errors()
    if args.print_table and not errors:
        for folder in LAYERS:
            print(f"{folder:17} -> {', '.join(sorted(reachable(folder))) or '(nothing)'}")
        return 0
    files = 0
    if not errors:
        for rel in source_files(args.root):
            files += 1
            errors.extend(check_file(args.root, rel))
    if errors:
        for e in errors:
            print(e, file=sys.stderr)
        print(f"check_layering: {len(errors)} wrong-way include(s); the allowed arrows are in "
              f"scripts/check_layering.py (LAYERS) and docs/layout.md", file=sys.stderr)
        return 1
    if args.stamp:
        with open(args.stamp, "w") as f:
            f.write(f"{files} files checked\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
