"""One definition of the target model flag, shared by every command; typed run configurations at the CLI edge."""

from __future__ import annotations

import pytest

from specforge.cli import COMMANDS, build_parser
from specforge.errors import SpecforgeError
from specforge.flags import TARGET_DEST, target_from_args
from specforge.modeling.loading import DEFAULT_TARGET

OPTIONAL = {"export", "validate"}  # the target only enables extra checks there
REQUIRED_ARGS = {"regenerate": ["--raw-data-file", "x.jsonl", "--output-dir", "o"],
                 "build-cache": ["--train-data-path", "x.jsonl"], "export": ["--to", "hf", "--checkpoint", "c"],
                 "validate": ["d"], "serve": [],
                 "prepare-hidden-states": ["--train-data-path", "x.jsonl", "--output-dir", "o"], "train": [], "bench": []}


def _target_actions(parser):
    return [a for a in parser._actions if a.dest == TARGET_DEST]


@pytest.mark.parametrize("command", sorted(REQUIRED_ARGS))
def test_every_command_takes_the_target_under_both_seed_names(command):
    parser, _ = build_parser(command)
    (action,) = _target_actions(parser)  # exactly one definition
    assert {"--target-model-path", "--model-path"} <= set(action.option_strings)
    assert action.default == (None if command in OPTIONAL else DEFAULT_TARGET)
    for flag in ("--target-model-path", "--model-path"):
        ns = parser.parse_args([*REQUIRED_ARGS[command], flag, "/t"])
        assert target_from_args(ns) == "/t"


def test_commands_without_target_flag_are_known():
    with_flag = {c for c in COMMANDS if _target_actions(build_parser(c)[0])}
    assert with_flag == set(REQUIRED_ARGS)


def test_two_spellings_naming_different_targets_is_one_error():
    parser, _ = build_parser("bench")
    ns = parser.parse_args(["--model-path", "/a", "--target-model-path", "/b"])
    with pytest.raises(SpecforgeError, match="--model-path \\(/a\\), --target-model-path \\(/b\\) name different"):
        target_from_args(ns)
    assert target_from_args(parser.parse_args(["--model-path", "/a", "--target-model-path", "/a"])) == "/a"


def test_train_flags_take_their_defaults_from_the_run_config():
    from specforge.train.config import TrainRunConfig

    parser, _ = build_parser("train")
    ns = parser.parse_args([])
    for name, default in TrainRunConfig.defaults().items():
        assert getattr(ns, name) == default, name
    cfg = TrainRunConfig.from_namespace(parser.parse_args(["--train-data-path", "d", "--output-dir", "o",
                                                           "--batch-size", "3"]))
    assert cfg.batch_size == 3 and cfg.target_model_path == DEFAULT_TARGET
    with pytest.raises(SpecforgeError, match="--batch-size must be >= 1"):
        TrainRunConfig(train_data_path="d", output_dir="o", batch_size=0)
