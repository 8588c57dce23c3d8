#!/usr/bin/env python3
"""Fails when a file of a lower layer includes a header of a higher one.

The layers, lowest first, are kernels -> parallel -> models -> trainer -> rl (DESIGN.md): each
may include its own folder and those below it (and configs/, the schema every layer reads).
CMake links each layer only against the layers below, but a header-only piece of a higher
layer would still compile in, so the rule is checked on the #include lines themselves.
Prints file:line, the include and the rule it breaks; exit 1 when there is any.
"""
import pathlib
import re
import sys

LAYERS = ["kernels", "parallel", "models", "trainer", "rl"]
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
SOURCES = {".h", ".cc", ".cu", ".cuh"}


def layer_of(path):
    first = pathlib.PurePosixPath(path).parts[0]
    return LAYERS.index(first) if first in LAYERS else None


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    broken = []
    checked = 0
    for name in LAYERS:
        for file in sorted((root / name).rglob("*")):
            if file.suffix not in SOURCES or not file.is_file():
                continue
            checked += 1
            rel = file.relative_to(root).as_posix()
            own = layer_of(rel)
            for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
                match = INCLUDE.match(line)
                if not match:
                    continue
                target = layer_of(match.group(1))
                if target is not None and target > own:
                    broken.append(f"{rel}:{number}: includes \"{match.group(1)}\": {LAYERS[own]}/ "
                                  f"may include only {', '.join(LAYERS[:own + 1])} (and configs), "
                                  f"not {LAYERS[target]}/, a higher layer")
    if checked == 0:
        print(f"layering_test: no sources under {root}: give the source root", file=sys.stderr)
        return 1
    for line in broken:
        print(line)
    print(f"layering_test: {checked} files, {len(broken)} upward includes")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
