"""The example recipes call specforge only with flags that exist (the scripts are not executed here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from specforge.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent
# seed entry points that are shims onto a specforge command; a shim names its command in main([...])
SHIM_RE = re.compile(r"""main\(\[\s*["']([a-z-]+)["']""")
# shims of commands that land with other issues; their flags are checked once the shim exists
PENDING: set[str] = set()


def specforge_calls(script: Path) -> list[tuple[str, str, list[str]]]:
    """``(how it is called, specforge command, arguments)`` for every specforge call in a bash script."""
    text = script.read_text(encoding="utf-8")
    text = re.sub(r"<<'PY'.*?\nPY\n", "\n", text, flags=re.DOTALL)  # inline Python is not a specforge call
    text = text.replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        for i, w in enumerate(words):
            if w == "specforge" and i + 1 < len(words) and words[i + 1] in COMMANDS:
                calls.append(("specforge", words[i + 1], words[i + 2:]))
                break
            if w.endswith(".py") and (ROOT / w).is_file():  # python X.py / torchrun ... X.py
                m = SHIM_RE.search((ROOT / w).read_text(encoding="utf-8"))
                assert m, f"{script.name}: {w} is not a specforge shim"
                calls.append((w, m.group(1), words[i + 1:]))
                break
            if w.endswith(".py") and w.startswith("scripts/") and not (ROOT / w).is_file():
                assert w in PENDING, f"{script.name} calls {w}, which does not exist"
                calls.append((w, "", []))
                break
    return calls


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


STAGES = {"prepare-data", "regenerate", "train", "bench", "export", "validate"}


@pytest.mark.parametrize("script, stages", [("run_llama3_eagle3_online.sh", STAGES | {"build-cache"}),
                                            ("run_smollm2_eagle3.sh", STAGES)])
def test_every_flag_of_the_recipe_exists(script, stages):
    calls = specforge_calls(ROOT / "examples" / script)
    seen = {cmd for _, cmd, _ in calls}
    assert stages <= seen, seen
    for how, cmd, args in calls:
        if not cmd:  # a pending shim (see PENDING)
            continue
        parser, _ = build_parser(cmd)
        known = set(parser._option_string_actions)
        unknown = [f for f in _flags(args) if f not in known]
        assert not unknown, f"{script}: {how} ({cmd}) passes unknown flags {unknown}"
    if script == "run_llama3_eagle3_online.sh":
        train = [args for _, cmd, args in calls if cmd == "train"]
        assert train and {"--tp-size", "--report-to", "--wandb-project"} <= set(_flags(train[0]))


def test_the_checker_catches_an_unknown_flag(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("python scripts/prepare_data.py --dataset sharegpt --no-such-flag 1\n"
                   "specforge bench --config-list 1,3,1,4 \\\n    --bogus=2\n")
    calls = specforge_calls(bad)
    assert [(c, _flags(a)) for _, c, a in calls] == [("prepare-data", ["--dataset", "--no-such-flag"]),
                                                     ("bench", ["--config-list", "--bogus"])]
