"""Predicted peak bytes per GPU of one training step, by part, and whether it fits a GPU with headroom."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import activations
from .hardware import GIB, GPU
from .layout import Layout
from .model_states import ParamCounts, model_state_bytes
from .shapes import shapes_for

# Outside torch's allocator: CUDA context, cuBLAS / NCCL workspaces (torch.cuda.max_memory_allocated does not
# see them; nvidia-smi does).
CUDA_CONTEXT_BYTES = 1.5 * GIB
# The caching allocator's rounding and fragmentation on top of the live tensors (a fraction of them).
ALLOCATOR_OVERHEAD = 0.05
# A run "fits" when the prediction leaves at least this fraction of the GPU free.
REQUIRED_HEADROOM = 0.10


def fused_loss_applies(model_cfg, layout: Layout) -> bool:
    """FLA's linear + cross entropy (no logits): fused_ops=fla, TP = 1, no ZeRO-3, no logit soft cap
    (mirrors ``parallel.fused_loss_applies``)."""
    return model_cfg.fused_ops == "fla" and layout.tp == 1 and layout.zero_stage != 3 and model_cfg.family == "paper"


def planned_backend(model_cfg) -> str:
    """The backend a CUDA run uses: "auto" resolves as ``xlstm_kernels.resolve_backend`` does on CUDA (the
    first of AUTO_CUDA_ORDER installed here; triton when none is: CUDA builds of torch ship it)."""
    if model_cfg.backend != "auto":
        return model_cfg.backend
    if model_cfg.mlstm_form != "chunkwise":
        return "torch"
    import xlstm_kernels

    return next((n for n in xlstm_kernels.AUTO_CUDA_ORDER if n in xlstm_kernels.MLSTM_BACKENDS), "triton")


@dataclass
class MemoryEstimate:
    gpu: GPU
    layout: Layout
    backend: str
    parts: dict[str, float] = field(default_factory=dict)  # bytes per GPU, in print order
    notes: dict[str, float] = field(default_factory=dict)  # "of which" lines (not added again)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def headroom(self) -> float:
        """Fraction of the GPU left free (negative: does not fit)."""
        return 1.0 - self.total / self.gpu.memory_bytes

    def fits(self, headroom: float = REQUIRED_HEADROOM) -> bool:
        return self.headroom >= headroom

    def format(self) -> str:
        lines = [f"{self.layout.describe()} on {self.layout.gpus} x {self.gpu.name}, {self.backend} cells"]
        for name, b in self.parts.items():
            lines.append(f"  {name:48s} {b / GIB:9.2f} GiB")
            for note, nb in self.notes.items():
                if note.startswith(name + ": "):
                    lines.append(f"    {note[len(name) + 2:]:46s} {nb / GIB:9.2f} GiB")
        verdict = ("fits" if self.fits() else
                   "fits, but with < 10 % headroom" if self.headroom >= 0 else "DOES NOT FIT")
        lines.append(f"  {'total':48s} {self.total / GIB:9.2f} GiB of {self.gpu.memory_bytes / GIB:.1f} GiB "
                     f"({100 * self.headroom:.0f} % free): {verdict}")
        return "\n".join(lines)


def estimate(cfg, layout: Layout, gpu: GPU, params: ParamCounts | None = None,
             backend: str | None = None) -> MemoryEstimate:
    """Peak bytes per GPU for ``cfg`` (a root Config: model, data.seq_len, train.precision) under ``layout``;
    ``backend`` overrides the one the model config resolves to on CUDA (``planned_backend``)."""
    m = cfg.model
    backend = backend or planned_backend(m)
    params = params or ParamCounts.of(m)
    precision = cfg.train.precision
    sh = shapes_for(m, cfg.data.seq_len, layout.micro_batch, layout.tp, layout.cp, layout.sp, precision,
                    reset=True)  # packed documents with resets: every shipped data config
    est = MemoryEstimate(gpu, layout, backend)
    est.parts.update(model_state_bytes(params, precision, layout.zero_stage, layout.tp, layout.dp,
                                       cfg.train.deepspeed))
    fused = fused_loss_applies(m, layout)
    saved = activations.saved_bytes(m, sh, backend, layout.activation_checkpointing, fused)
    for name, b in saved.items():
        est.parts[f"activations: {name}"] = b
    kernel = activations.kernel_saved_bytes(m, sh, backend)
    if layout.activation_checkpointing:
        kernel = kernel / m.num_blocks  # one block's worth during its recompute (an average block)
        est.notes["activations: one block recomputed: of which cells + convs (kernel-saved)"] = kernel
    else:
        est.notes["activations: blocks: of which cells + convs (kernel-saved)"] = kernel
    # backward transients: the logits' gradient (fp32 softmax grad + its cast), two residual-stream grads and
    # (Triton) the recomputed per-chunk states of one layer
    vocab_grad = 0.0 if fused else sh.B * sh.S * (m.vocab_size // layout.tp) * (4 + sh.act)
    backward = vocab_grad + 2 * sh.B * sh.S_sp * m.embedding_dim * 4
    if backend == "triton":  # the per-chunk states of the layer being differentiated are recomputed
        from .kernel_states import mlstm_triton_backward_states

        Q = m.qk_head_dim if m.family == "large" else m.mlstm_inner_dim // m.num_heads
        V = m.v_head_dim if m.family == "large" else Q
        backward += mlstm_triton_backward_states(sh.B * m.num_heads // layout.tp, sh.NC, Q, V, a=sh.act)
    est.parts["backward transients"] = backward
    live = est.total
    est.parts["allocator overhead + CUDA context"] = ALLOCATOR_OVERHEAD * live + CUDA_CONTEXT_BYTES
    return est
