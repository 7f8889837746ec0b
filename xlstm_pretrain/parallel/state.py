"""Process groups for world = DP x CP x TP (TP innermost), and the ``mpu`` object DeepSpeed reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .config import ParallelConfig
from .mappings import CommContext


@dataclass
class ParallelState:
    tp: int
    cp: int
    dp: int
    sequence_parallel: bool
    mesh: DeviceMesh | None
    tp_group: object = None
    cp_group: object = None
    dp_group: object = None
    dp_cp_group: object = None  # DeepSpeed's sequence-data-parallel group: gradients are reduced over DP x CP
    # what the collectives of the model built for this state remember between calls (traffic log,
    # activation-checkpoint replay); see mappings.CommContext
    comm: CommContext = field(default_factory=CommContext, repr=False, compare=False)

    @property
    def tp_rank(self) -> int:
        return dist.get_rank(self.tp_group) if self.tp > 1 else 0

    @property
    def cp_rank(self) -> int:
        return dist.get_rank(self.cp_group) if self.cp > 1 else 0

    @property
    def dp_rank(self) -> int:
        return dist.get_rank(self.dp_group) if self.dp > 1 else 0


def single_process_state() -> ParallelState:
    return ParallelState(tp=1, cp=1, dp=1, sequence_parallel=False, mesh=None)


def init_parallel_state(cfg: ParallelConfig, device_type: str | None = None) -> ParallelState:
    """Build the mesh from an initialised default process group (call check_layout first)."""
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call init_process_group (torchrun sets the env)")
    world = dist.get_world_size()
    tp, cp = cfg.tensor_parallel, cfg.context_parallel
    if world % (tp * cp):
        raise ValueError(f"world size {world} is not a multiple of tensor_parallel x context_parallel = {tp} x {cp}")
    dp = world // (tp * cp)
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, (dp, cp, tp), mesh_dim_names=("dp", "cp", "tp"))
    return ParallelState(
        tp=tp, cp=cp, dp=dp, sequence_parallel=cfg.sequence_parallel, mesh=mesh,
        tp_group=mesh.get_group("tp"), cp_group=mesh.get_group("cp"), dp_group=mesh.get_group("dp"),
        dp_cp_group=mesh["dp", "cp"]._flatten("dp_cp").get_group(),
    )


def _axis(rank, group, size):
    """The get_<axis>_rank / _group / _world_size methods of one mesh axis, read from the ParallelState."""
    return (lambda mpu: rank(mpu.s)), (lambda mpu: group(mpu.s)), (lambda mpu: size(mpu.s))


class DeepSpeedMPU:
    """The model-parallel unit DeepSpeed queries (``deepspeed.initialize(..., mpu=...)``).

    "Model parallel" is TP. Context parallelism is DeepSpeed's "sequence parallel": ZeRO partitions and
    reduces gradients over the sequence-data-parallel group (DP x CP) when one exists.
    """

    def __init__(self, state: ParallelState):
        self.s = state

    # model (= tensor) parallel
    get_model_parallel_rank, get_model_parallel_group, get_model_parallel_world_size = _axis(
        lambda s: s.tp_rank, lambda s: s.tp_group, lambda s: s.tp)
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    # data parallel
    get_data_parallel_rank, get_data_parallel_group, get_data_parallel_world_size = _axis(
        lambda s: s.dp_rank, lambda s: s.dp_group, lambda s: s.dp)
    # sequence (= context) parallel, and DP x CP
    get_sequence_parallel_rank, get_sequence_parallel_group, get_sequence_parallel_world_size = _axis(
        lambda s: s.cp_rank, lambda s: s.cp_group, lambda s: s.cp)
    get_sequence_data_parallel_rank, get_sequence_data_parallel_group, get_sequence_data_parallel_world_size = _axis(
        lambda s: dist.get_rank(s.dp_cp_group), lambda s: s.dp_cp_group, lambda s: s.dp * s.cp)
