"""`make install`'s last step: run `pip check` and say in one line what it means for specforge.

The data-only packages (requirements-data.txt) are installed without their declared dependencies on purpose,
so pip check lists them; anything else it lists is a real conflict and fails the install.
"""
from __future__ import annotations

import re
import subprocess
import sys


def main(data_reqs: str) -> int:
    data = set()
    for line in open(data_reqs, encoding="utf-8"):
        name = line.split("#")[0].split("==")[0].strip()
        if name:
            data.add(re.sub(r"[-_.]+", "-", name).lower())
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    ours, theirs = [], set()
    for line in out.splitlines():
        pkg = re.sub(r"[-_.]+", "-", line.split(" ", 1)[0]).lower()
        (theirs.add(pkg) if pkg in data else ours.append(line)) if line.strip() else None
    if ours:
        print("pip check found broken requirements:\n  " + "\n  ".join(ours), file=sys.stderr)
        return 1
    note = (f" ({len(theirs)} data-only packages lack deps they declare on purpose: only their data files are read)"
            if theirs else "")
    print(f"install OK: pip check reports nothing broken that specforge uses{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
