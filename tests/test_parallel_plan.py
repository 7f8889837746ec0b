"""The declarative parallel plan (xlstm_pretrain/parallel/plan.py): it names every block type and parameter
of both families, builds new modules instead of changing the plain ones, is applied once, and context
parallelism wraps cells without changing their class or any parameter name. One process: building needs
no communication (the multi-rank exactness tests are tests/test_tensor_parallel.py and
tests/test_context_parallel.py)."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
from torch import nn

from test_sharded_build import rank_view, tiny
from xlstm_pretrain.model import blocks_large, blocks_paper, build_model
from xlstm_pretrain.model.cells import MLSTMCell, SLSTMCell
from xlstm_pretrain.model.components import CausalConv1d
from xlstm_pretrain.model.config import ModelConfig
from xlstm_pretrain.parallel import CommContext, ParallelState, apply_context_parallel, parallelize_model
from xlstm_pretrain.parallel.context_parallel import ContextParallelCausalConv1d
from xlstm_pretrain.parallel.plan import BLOCK_PLANS, CONTEXT_PARALLEL_PLAN, check_plan_covers, tensor_parallel_specs

FAMILIES = typing.get_args(typing.get_type_hints(ModelConfig)["family"])


def cp_view(cp: int) -> ParallelState:
    """A CP layout for building only (wrapping a cell issues no collective)."""
    return ParallelState(tp=1, cp=cp, dp=1, sequence_parallel=False, mesh=None)


def every_block_kind(family: str) -> ModelConfig:
    """A config with every block type the family builds (paper: mLSTM and sLSTM)."""
    return tiny(family, slstm_at=[1]) if family == "paper" else tiny(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_names_every_block_type_and_parameter_of_each_family(family):
    model = build_model(every_block_kind(family), device="meta")
    specs = tensor_parallel_specs(model)  # raises for a block type without a plan
    check_plan_covers(model, specs)  # raises for a parameter no spec names
    assert {type(b) for b in model.blocks} <= set(BLOCK_PLANS)


def test_every_block_class_of_the_model_package_has_a_plan():
    """A block class added to the model without a BLOCK_PLANS entry fails here, even before a config uses it."""
    block_classes = {cls for module in (blocks_paper, blocks_large) for _, cls in inspect.getmembers(module, inspect.isclass)
                     if issubclass(cls, nn.Module) and cls.__module__ == module.__name__ and cls.__name__.endswith("Block")}
    assert block_classes, "no block classes found: the naming convention changed, update this test"
    assert block_classes <= set(BLOCK_PLANS), block_classes - set(BLOCK_PLANS)


def test_optional_submodules_may_be_absent():
    model = build_model(tiny("paper", slstm_at=[1], slstm_conv1d_kernel_size=0), device="meta")
    specs = tensor_parallel_specs(model)
    assert "blocks.1.slstm.conv" not in specs
    check_plan_covers(model, specs)


def test_a_parameter_the_plan_does_not_name_is_an_error():
    model = build_model(tiny("large"), device="meta")
    model.blocks[0].mlstm_layer.extra_scale = nn.Parameter(torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlstm_layer\.extra_scale"):
        parallelize_model(model, rank_view(2, 0))


def test_a_block_type_without_a_plan_is_an_error():
    class NewBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    model = build_model(tiny("large"), device="meta")
    model.blocks[1] = NewBlock()
    with pytest.raises(TypeError, match="no tensor-parallel plan for block type NewBlock"):
        parallelize_model(model, rank_view(2, 0))


def snapshot(module: nn.Module) -> dict:
    """A module's attributes, its parameter / child / hook dicts by the identity of their entries."""
    return {k: {key: id(value) for key, value in v.items()} if isinstance(v, dict) else v
            for k, v in vars(module).items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_parallelize_builds_new_modules_and_leaves_the_plain_model_as_it_was(family):
    torch.manual_seed(0)
    plain = build_model(every_block_kind(family))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    modules_before = {name: (m, snapshot(m)) for name, m in plain.named_modules()}
    sharded = parallelize_model(plain, rank_view(2, 1))
    assert sharded is not plain
    assert list(sharded.state_dict()) == list(before)  # the plain model's names
    # the plain model still has its modules, attributes (head counts ...) and full weights
    assert {name: m for name, m in plain.named_modules()} == {name: m for name, (m, _) in modules_before.items()}
    for name, (m, attrs) in modules_before.items():
        assert snapshot(m) == attrs, name
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    # every module that holds sharded weights is a new object
    plain_ids = {id(m) for m in plain.modules()}
    for name, p in sharded.named_parameters():
        owner = sharded.get_submodule(name.rpartition(".")[0])
        assert id(owner) not in plain_ids, name
        assert all(p is not q for q in plain.parameters()), name


def test_applying_a_plan_twice_raises():
    tp = parallelize_model(build_model(tiny("paper"), device="meta"), rank_view(2, 0))
    with pytest.raises(RuntimeError, match="already tensor-parallel"):
        parallelize_model(tp, rank_view(2, 0))
    plain = build_model(tiny("large"), device="meta")
    single = parallelize_model(plain, rank_view(1, 0))  # TP=1: a fresh annotated root, nothing sharded
    with pytest.raises(RuntimeError, match="already tensor-parallel"):
        parallelize_model(single, rank_view(1, 0))
    # degree 1 leaves the plain model plain: CP=1 then TP=2 on it is fine
    assert single is not plain and not hasattr(plain, "parallel_plans")
    assert apply_context_parallel(plain, cp_view(1)) is not plain and not hasattr(plain, "parallel_plans")
    parallelize_model(plain, rank_view(2, 0))
    cp = apply_context_parallel(tp, cp_view(2))
    with pytest.raises(RuntimeError, match="already context-parallel"):
        apply_context_parallel(cp, cp_view(2))
    with pytest.raises(RuntimeError, match="before context parallelism"):
        parallelize_model(apply_context_parallel(build_model(tiny("large"), device="meta"), cp_view(2)),
                          rank_view(2, 0))


@pytest.mark.parametrize("family", FAMILIES)
def test_context_parallel_wraps_cells_without_changing_their_class_or_parameter_names(family):
    torch.manual_seed(0)
    plain = build_model(every_block_kind(family))
    wrapped_types = tuple(CONTEXT_PARALLEL_PLAN)
    originals = {name: m for name, m in plain.named_modules() if type(m) in wrapped_types}
    classes = {name: type(m) for name, m in originals.items()}
    model = apply_context_parallel(plain, cp_view(2))
    assert {name: type(m) for name, m in originals.items()} == classes  # no __class__ swap
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    for name, original in originals.items():
        wrapper = model.get_submodule(name)
        assert type(wrapper) is CONTEXT_PARALLEL_PLAN[type(original)].wrapper
        assert type(wrapper.local) is type(original)
        if isinstance(original, CausalConv1d):  # the conv's own weights, under the conv's own names
            assert isinstance(wrapper, ContextParallelCausalConv1d)
            assert dict(wrapper.named_parameters()) == dict(wrapper.local.named_parameters())
    # hooks on the plain cells (the trainer's gate telemetry finds them by type) still see every call
    cells = [m for m in model.modules() if isinstance(m, (MLSTMCell, SLSTMCell))]
    assert len(cells) == sum(isinstance(m, (MLSTMCell, SLSTMCell)) for m in originals.values()) > 0


def test_comm_context_logs_and_replays_per_context():
    """The traffic log and the activation-checkpoint replay live in a CommContext, not in module globals:
    two contexts do not see each other's records, and a replayed block gets its recorded messages back."""
    a, b = CommContext(), CommContext()
    x = torch.ones(3)
    with a.logging() as log_a:
        a.record("all_gather_stack", x, None, "all_gather")
        b.record("reduce_from_tp", x, None, "all_reduce")  # b is not logging
    assert [r.name for r in log_a] == ["all_gather_stack"] and log_a[0].payload == 12 and a.log is None

    sent = []

    def send(value):
        sent.append(value)
        return torch.full((2,), float(value))

    record, replay = a.checkpoint_context()
    with record:
        first = a.forward_message("recv_state", lambda: send(1))
    assert b.replay is None and a.replay is None
    with replay:
        again = a.forward_message("recv_state", lambda: send(2))  # the recompute: not sent again
    assert sent == [1] and torch.equal(first, again)
    record, replay = a.checkpoint_context()
    with record:
        a.forward_message("recv_state", lambda: send(3))
    with replay, pytest.raises(RuntimeError, match="must be deterministic"):
        a.forward_message("send_state", lambda: send(4))
