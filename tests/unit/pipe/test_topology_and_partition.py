"""Grid arithmetic (DeepSpeed's ProcessTopology) and layer partitioning, without processes."""

import pytest
import torch

from zerospeed.comm.groups import grid_rank_lists
from zerospeed.errors import ConfigError
from zerospeed.pipe import LayerSpec, PipeDataParallelTopology, PipelineModule, PipeModelDataParallelTopology, ProcessTopology, TiedLayerSpec
from zerospeed.pipe.module import partition_balanced, partition_uniform


def test_process_topology_matches_deepspeed_docstrings():
    topo = ProcessTopology(axes=["x", "y"], dims=[2, 3])
    assert topo.get_rank(x=0, y=1) == 1
    assert topo.get_dim("y") == 3 and topo.get_dim("z") == 0
    assert topo.get_coord(1).x == 0 and topo.get_coord(1).y == 1
    assert topo.get_axis_list(axis="x", idx=0) == [0, 1, 2]
    assert topo.get_axis_list(axis="y", idx=0) == [0, 3]
    three = ProcessTopology(axes=["pipe", "data", "model"], dims=[2, 2, 2])
    assert three.get_axis_comm_lists("pipe") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert three.filter_match(pipe=0, data=1) == [2, 3]
    assert ProcessTopology(axes=["a", "b"], dims=[2, 2]).get_rank_repr(rank=3, omit_axes=[]) == "a_01-b_01"
    with pytest.raises(ValueError, match="slices"):
        topo.get_rank(x=0)


@pytest.mark.parametrize("pp,dp,tp", [(2, 1, 1), (2, 2, 1), (4, 2, 1), (2, 2, 2), (3, 1, 2)])
def test_topologies_agree_with_the_comm_groups_grid(pp, dp, tp):
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp) if tp > 1 else PipeDataParallelTopology(num_pp=pp, num_dp=dp)
    lists = grid_rank_lists(pp * dp * tp, pp=pp, tp=tp)
    assert sorted(topo.get_axis_comm_lists("pipe")) == sorted(lists["pipe"])
    assert sorted(topo.get_axis_comm_lists("data")) == sorted(lists["data"])
    if tp > 1:
        assert sorted(topo.get_axis_comm_lists("model")) == sorted(lists["tensor"])


def test_partitions_match_deepspeed():
    # Expected values measured with deepspeed 0.19.8's runtime.utils functions.
    assert partition_uniform(7, 3) == [0, 3, 5, 7]
    assert partition_uniform(10, 4) == [0, 3, 6, 8, 10]
    assert partition_uniform(3, 5) == [0, 1, 2, 3, 3, 3]
    assert partition_balanced([192, 481, 481, 481, 24, 0], 2) == [0, 2, 6]
    assert partition_balanced([192, 481, 481, 481, 24, 0], 3) == [0, 2, 3, 6]
    assert partition_balanced([1, 0, 1, 0, 1, 1, 0], 3) == [0, 4, 5, 7]
    assert partition_balanced([5, 5, 5, 5, 5], 4) == [0, 2, 3, 4, 5]
    assert partition_balanced([100, 1, 1, 1, 1, 100], 2) == [0, 3, 6]


def test_more_stages_than_layers_fails_before_any_process_group():
    with pytest.raises(ConfigError, match="2 layers but num_stages=3"):
        PipelineModule([torch.nn.Linear(2, 2), torch.nn.ReLU()], num_stages=3)


def test_a_layer_spec_must_name_a_module_class():
    with pytest.raises(ConfigError, match="torch.nn.Module subclass"):
        LayerSpec(torch.relu)
    with pytest.raises(ConfigError, match="torch.nn.Module subclass"):
        TiedLayerSpec("embed", dict)
    with pytest.raises(ConfigError, match="layer 1 is a int"):
        PipelineModule([torch.nn.Linear(2, 2), 3], num_stages=1)
    with pytest.raises(ConfigError, match="num_stages= or topology="):
        PipelineModule([torch.nn.Linear(2, 2)])


def test_partition_methods_are_checked_before_any_process_group():
    layers = [LayerSpec(torch.nn.Linear, 4, 4), LayerSpec(torch.nn.ReLU), LayerSpec(torch.nn.Linear, 4, 4)]
    with pytest.raises(ConfigError, match="allowed: 'parameters', 'uniform', 'type:<regex>'"):
        PipelineModule(layers, num_stages=2, partition_method="profile")
    with pytest.raises(ConfigError, match="matches no layer"):
        PipelineModule(layers, num_stages=2, partition_method="type:Transformer")
    spec = TiedLayerSpec("embed", torch.nn.Embedding, 4, 2, tied_weight_attr="weight")
    assert spec.tied_weight_attr == ["weight"] and repr(LayerSpec(torch.nn.Linear, 4, 4, bias=False)) == "Linear(4, 4, bias=False)"


def test_no_process_group_was_started_by_these_checks():
    from zerospeed import comm

    assert not comm.is_initialized()
