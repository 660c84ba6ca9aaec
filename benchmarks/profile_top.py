"""Top functions from a py-spy ``--format raw`` (collapsed stacks) file.

    python benchmarks/profile_top.py benchmarks/results/profile/meshxmpp-py-spy.txt [--top 25]

"self" counts the samples where the function was the innermost frame (where the time is spent;
generated methods such as a dataclass's ``__init__`` are shown with their caller, and counted in
the caller's module);
"total" counts the samples where it was anywhere on the stack (what it costs with its callees).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def _func(frame: str) -> str:
    """'send_all (trio/_highlevel_socket.py:123)' -> 'send_all (trio/_highlevel_socket.py)'."""
    frame = _LINE.sub(")", frame.strip())
    # Shorten site-packages / stdlib paths to the part after the last 'site-packages/' or 'lib/python3.x/'.
    frame = re.sub(r"\(.*?/(?:site-packages|python3\.\d+)/", "(", frame)
    frame = re.sub(r"\(/work/main/", "(", frame)
    return frame


def _module(frame: str) -> str:
    m = re.search(r"\(([^)]*)\)", frame)
    path = m.group(1) if m else "?"
    parts = path.split("/")
    if parts and parts[0] == "meshxmpp":
        return "/".join(parts[:2])  # meshxmpp/<subpackage or module>
    return parts[0].removesuffix(".py") if parts else "?"


def summarize(path: Path | str, top: int = 25) -> dict:
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    module_c: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_func(f) for f in stack.split(";") if f.strip()]
        # py-spy puts "process/thread" pseudo-frames first; they carry no '('.
        frames = [f for f in frames if "(" in f]
        if not frames:
            continue
        samples += n
        leaf = frames[-1]
        if "(<" in leaf and len(frames) > 1:
            # Generated code (dataclass/attrs __init__, __hash__...): name who called it.
            leaf = f"{leaf} <- {frames[-2]}"
            module_c[_module(frames[-2])] += n
        else:
            module_c[_module(leaf)] += n
        self_c[leaf] += n
        for f in set(frames):
            total_c[f] += n
    pct = (lambda c: round(100.0 * c / samples, 1)) if samples else (lambda c: 0.0)
    # Leave out the chain of frames that is on every stack of the main thread (runpy, main, trio.run).
    root = max(total_c.values(), default=0)
    inclusive = [(f, c) for f, c in total_c.most_common() if c < 0.95 * root]
    return {
        "samples": samples,
        "self": [(f, pct(c)) for f, c in self_c.most_common(top)],
        "total": [(f, pct(c)) for f, c in inclusive[:top]],
        "self_by_module": [(m, pct(c)) for m, c in module_c.most_common(top)],
    }


def print_summary(s: dict, top: int = 25) -> None:
    print(f"{s['samples']} samples")
    for key, title in (
        ("self_by_module", "self time by module"),
        ("self", "self time (innermost frame)"),
        ("total", "total time (on the stack)"),
    ):
        print(f"\n-- {title}")
        for f, p in s[key][:top]:
            print(f"{p:6.1f} %  {f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("raw", help="py-spy record --format raw output")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    print_summary(summarize(args.raw, args.top), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
