"""GPU specifications the planner needs: usable memory, dense BF16 peak, intra-node and inter-node bandwidth.

Bandwidths are per GPU, one direction, as achieved by NCCL rings in practice (about 80 % of the link
rate); they rank layouts, they do not promise step times.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # what torch.cuda.mem_get_info reports as total on an idle device
    peak_bf16_flops: float  # dense
    nvlink_bytes_per_s: float  # within a node (TP, SP, CP, DP inside the node)
    network_bytes_per_s: float  # across nodes (DP / ZeRO beyond 8 GPUs)
    gpus_per_node: int = 8


# "80 GB" cards expose 79.3 GiB (85.1e9 bytes), the 141 GB H200 139.8 GiB, the 40 GB A100 39.4 GiB.
GPUS: dict[str, GPU] = {
    "h100-80gb": GPU("h100-80gb", int(79.3 * GIB), 989e12, 360e9, 40e9),
    "h200-141gb": GPU("h200-141gb", int(139.8 * GIB), 989e12, 360e9, 40e9),
    "a100-80gb": GPU("a100-80gb", int(79.3 * GIB), 312e12, 240e9, 20e9),
    "a100-40gb": GPU("a100-40gb", int(39.4 * GIB), 312e12, 240e9, 20e9),
}
