"""Process groups for world = DP x CP x TP (TP innermost), and the ``mpu`` object DeepSpeed reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .config import ParallelConfig


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


class DeepSpeedMPU:
    """The model-parallel unit DeepSpeed queries (``deepspeed.initialize(..., mpu=...)``).

    "Model parallel" is TP. Context parallelism is DeepSpeed's "sequence parallel": ZeRO partitions and
    reduces gradients over the sequence-data-parallel group (DP x CP) when one exists.
    """

    def __init__(self, state: ParallelState):
        self.s = state

    # model (= tensor) parallel
    def get_model_parallel_rank(self):
        return self.s.tp_rank

    def get_model_parallel_group(self):
        return self.s.tp_group

    def get_model_parallel_world_size(self):
        return self.s.tp

    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    # data parallel
    def get_data_parallel_rank(self):
        return self.s.dp_rank

    def get_data_parallel_group(self):
        return self.s.dp_group

    def get_data_parallel_world_size(self):
        return self.s.dp

    # sequence (= context) parallel, and DP x CP
    def get_sequence_parallel_rank(self):
        return self.s.cp_rank

    def get_sequence_parallel_group(self):
        return self.s.cp_group

    def get_sequence_parallel_world_size(self):
        return self.s.cp

    def get_sequence_data_parallel_rank(self):
        return dist.get_rank(self.s.dp_cp_group)

    def get_sequence_data_parallel_group(self):
        return self.s.dp_cp_group

    def get_sequence_data_parallel_world_size(self):
        return self.s.dp * self.s.cp
