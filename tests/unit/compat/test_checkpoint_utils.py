"""`zerospeed.checkpoint.utils` (DeepSpeed's `deepspeed.checkpoint.utils`): compact clones for
torch.save, DeepSpeed's file names, and the attribute paths to both submodules."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import torch

from zerospeed.checkpoint.utils import (
    clone_tensors_for_torch_save,
    get_layer_ckpt_name_for_rank,
    get_model_ckpt_name_for_rank,
    get_zero_ckpt_name_for_rank,
)


def _saved_bytes(item, path) -> int:
    torch.save(item, path)
    return os.path.getsize(path)


def test_a_cloned_view_saves_its_elements_not_the_buffer(tmp_path):
    buffer = torch.arange(1000, dtype=torch.float32)
    view = buffer[100:110]
    whole = _saved_bytes({"w": view}, tmp_path / "view.pt")
    compact = _saved_bytes(clone_tensors_for_torch_save({"w": view}), tmp_path / "clone.pt")
    assert whole >= 1000 * 4  # the oracle: torch.save of the bare view pickles all 1000 floats
    assert compact < 1000 * 4 and compact < whole - 3900
    loaded = torch.load(tmp_path / "clone.pt")["w"]
    assert torch.equal(loaded, torch.arange(100, 110, dtype=torch.float32))
    assert loaded.untyped_storage().nbytes() == 10 * 4


def test_nested_containers_keep_their_types_and_get_fresh_tensors():
    Pair = collections.namedtuple("Pair", "a b")
    weight = torch.nn.Parameter(torch.randn(3, 2))
    state = collections.OrderedDict(
        model={"weight": weight},
        pieces=[weight[0], (weight[1], 7)],
        pair=Pair(weight[2], "name"),
        counts=collections.defaultdict(int, {"steps": 3}),
        step=5,
    )
    cloned = clone_tensors_for_torch_save(state)
    assert type(cloned) is collections.OrderedDict and list(cloned) == list(state)
    assert type(cloned["pair"]) is Pair and cloned["pair"].b == "name"
    assert type(cloned["counts"]) is collections.defaultdict and cloned["counts"]["missing"] == 0
    assert cloned["step"] == 5 and cloned["pieces"][1][1] == 7
    tensors = [cloned["model"]["weight"], cloned["pieces"][0], cloned["pieces"][1][0], cloned["pair"].a]
    originals = [weight, weight[0], weight[1], weight[2]]
    for ours, original in zip(tensors, originals):
        assert torch.equal(ours, original.detach())
        assert not ours.requires_grad and ours.grad_fn is None
        assert ours.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
        assert ours.untyped_storage().nbytes() == original.numel() * 4
        assert ours.device == torch.device("cpu")
    assert clone_tensors_for_torch_save("text") == "text" and clone_tensors_for_torch_save(None) is None


def test_device_given_as_a_string():
    x = torch.ones(4)[:2]
    y = clone_tensors_for_torch_save(x, device="cpu")
    assert torch.equal(y, x) and y.untyped_storage().nbytes() == 8
    meta = clone_tensors_for_torch_save([x], device="meta")[0]
    assert meta.device.type == "meta" and meta.shape == (2,)


def test_deepspeed_file_names():
    assert get_model_ckpt_name_for_rank("ck", "00") == os.path.join("ck", "mp_rank_00_model_states.pt")
    assert get_zero_ckpt_name_for_rank("ck", 1, 0) == os.path.join("ck", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert get_layer_ckpt_name_for_rank("ck", "layer_03", 1) == os.path.join("ck", "layer_03-model_01_model_states.pt")


# the attribute walk alone: no `from ... import` binds a submodule to the package first
_WALK = r"""
{first_import}
import zerospeed
package = zerospeed.checkpoint
print(package.utils.clone_tensors_for_torch_save.__module__ == "zerospeed.checkpoint.utils",
      package.constants.OPTIMIZER_STATE_DICT == "optimizer_state_dict",
      package.OPTIMIZER_STATE_DICT == "optimizer_state_dict",
      package.get_zero_ckpt_name_for_rank is package.utils.get_zero_ckpt_name_for_rank,
      hasattr(package, "no_such_name"))
"""


def test_submodules_resolve_however_the_package_was_imported():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first_imports = ("import zerospeed", "import zerospeed.checkpoint", "from zerospeed.checkpoint import layout")
    runs = [subprocess.Popen([sys.executable, "-c", _WALK.format(first_import=first)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for first in first_imports]
    for first, run in zip(first_imports, runs):
        out, err = run.communicate(timeout=120)
        assert out.split() == ["True", "True", "True", "True", "False"], (first, out, err)
