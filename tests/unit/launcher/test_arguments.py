"""`add_config_arguments`: DeepSpeed 0.19.8's "DeepSpeed" argument group, flag for flag."""

import argparse

import zerospeed
from zerospeed.runtime.arguments import add_config_arguments, add_core_arguments


def test_flags_defaults_and_values():
    parser = add_config_arguments(argparse.ArgumentParser())
    defaults = parser.parse_args([])
    assert (defaults.deepspeed, defaults.deepspeed_config, defaults.deepscale, defaults.deepscale_config) == (
        False, None, False, None
    )
    args = parser.parse_args(["--deepspeed", "--deepspeed_config", "ds.json", "--deepscale", "--deepscale_config", "old.json"])
    assert (args.deepspeed, args.deepspeed_config, args.deepscale, args.deepscale_config) == (True, "ds.json", True, "old.json")


def test_group_title_and_public_names():
    parser = argparse.ArgumentParser()
    assert zerospeed.add_config_arguments(parser) is parser
    group = next(g for g in parser._action_groups if g.title == "DeepSpeed")
    assert group.description == "DeepSpeed configurations"
    assert [a.dest for a in group._group_actions] == ["deepspeed", "deepspeed_config", "deepscale", "deepscale_config"]
    assert zerospeed.add_core_arguments is add_core_arguments


def test_user_flags_live_alongside():
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    add_config_arguments(parser)
    args = parser.parse_args(["--local_rank", "1", "--deepspeed_config", "c.json"])
    assert args.local_rank == 1 and args.deepspeed_config == "c.json"
