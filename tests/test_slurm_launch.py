"""launch/slurm.sbatch with stub `srun` and `scontrol` on PATH: the resolved command for 2 nodes, the GPU count
from SLURM's environment, the log path, and a short real run where the stub srun starts the torchrun command
once per "node" on this machine (2 agents, 1 CPU worker each, c10d rendezvous on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from launch_utils import free_port, kill_tree
from train_utils import REPO, prepare_data, tiny_overrides

SBATCH = REPO / "launch" / "slurm.sbatch"

SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || exit 1
if [ -n "${STUB_HOSTS_FILE:-}" ]; then cat "$STUB_HOSTS_FILE"; else printf '%s\\n' $STUB_HOSTS; fi
"""

# records its arguments (one a line) and exits with STUB_SRUN_EXIT (0); with STUB_SRUN_RUN=1 it runs the
# command after its own options once per node, like srun with one task a node, each agent told to use
# 127.0.0.1 (the only network here)
SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$STUB_SRUN_LOG"
[ "${STUB_SRUN_RUN:-0}" = 1 ] || exit "${STUB_SRUN_EXIT:-0}"
while [[ $1 == -* ]]; do shift; done
launcher=$1; shift
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$launcher" --local-addr 127.0.0.1 "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
"""


def stub_bin(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def slurm_env(tmp: Path, **extra: str) -> dict:
    ours = ("OMP_NUM_THREADS", "GPUS_PER_NODE")  # the script's own defaults are under test
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ours}
    env.update(PATH=f"{stub_bin(tmp)}:{env['PATH']}", STUB_SRUN_LOG=str(tmp / "srun_args"),
               STUB_HOSTS="gpu-a17 gpu-a18",
               SLURM_SUBMIT_DIR=str(REPO), SLURM_JOB_ID="4242", SLURM_JOB_NAME="xlstm", SLURM_NNODES="2",
               SLURM_JOB_NODELIST="gpu-a[17-18]", SLURM_CPUS_PER_TASK="64")
    env.update(extra)
    return env


def run_sbatch(env: dict, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SBATCH), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def srun_args(tmp: Path) -> list[str]:
    return (tmp / "srun_args").read_text().splitlines()


def test_two_nodes_resolve_to_one_srun_torchrun_command(tmp_path):
    proc = run_sbatch(slurm_env(tmp_path, SLURM_GPUS_PER_NODE="h100:8"), "configs/quickstart.yaml",
                      "--config", "configs/layout/tp2_zero1.yaml", "train.steps=10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert srun_args(tmp_path) == [
        "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=64",  # srun does not inherit it (22.05+)
        ".venv/bin/torchrun", "--nnodes", "2", "--nproc_per_node", "8",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu-a17:29500", "--rdzv-id", "4242",
        "--rdzv-conf", "join_timeout=600", "--max-restarts", "3",
        "-m", "xlstm_pretrain.train", "--config", "configs/quickstart.yaml", "--resume", "auto",
        "--config", "configs/layout/tp2_zero1.yaml", "train.steps=10"]
    # the resolved command is printed (into the job's log), with the thread count per worker: 64 CPUs / 8 GPUs
    printed = re.search(r"^\+ (.*)$", proc.stdout, re.M).group(1)
    assert printed.split() == ["srun", *srun_args(tmp_path)]
    assert "2 nodes x 8 GPUs, OMP_NUM_THREADS=8" in proc.stdout


@pytest.mark.parametrize("gpu_env, expected", [
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "h100:8"}, "4"),  # what the node really got wins
    ({"SLURM_GPUS_PER_NODE": "8"}, "8"),
    ({"SLURM_GPUS_PER_NODE": "gpu:h100:4"}, "4"),
    ({"SLURM_GPUS_PER_NODE": "a100:2,h100:2"}, "4"),
    ({"SLURM_GPUS_PER_NODE": "h100:8", "GPUS_PER_NODE": "2"}, "2"),  # an explicit GPUS_PER_NODE wins
])
def test_gpus_per_node_come_from_slurm(tmp_path, gpu_env, expected):
    proc = run_sbatch(slurm_env(tmp_path, **gpu_env), "configs/quickstart.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = srun_args(tmp_path)
    assert args[args.index("--nproc_per_node") + 1] == expected


def test_no_gpu_count_is_a_clear_error(tmp_path):
    proc = run_sbatch(slurm_env(tmp_path), "configs/quickstart.yaml")
    assert proc.returncode == 2
    assert "SLURM reports no GPUs" in proc.stderr and "GPUS_PER_NODE" in proc.stderr
    assert not (tmp_path / "srun_args").exists()


def test_a_long_node_list_still_names_the_first_node(tmp_path):
    """`scontrol show hostnames | head -n 1` under pipefail dies of SIGPIPE when the list outlasts head."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"gpu-{i:05d}\n" for i in range(20000)))  # 200 kB: more than a pipe holds
    env = slurm_env(tmp_path, STUB_HOSTS_FILE=str(hosts), SLURM_GPUS_ON_NODE="8")
    proc = run_sbatch(env, "configs/quickstart.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-00000:29500" in srun_args(tmp_path)


def test_a_failed_job_step_says_what_to_do(tmp_path):
    proc = run_sbatch(slurm_env(tmp_path, SLURM_GPUS_ON_NODE="8", STUB_SRUN_EXIT="1"), "configs/quickstart.yaml",
                      "train.steps=10")
    assert proc.returncode == 1
    assert "a node\nmissing from the rendezvous" in proc.stderr
    assert "sbatch --nodes 2 launch/slurm.sbatch configs/quickstart.yaml train.steps=10" in proc.stderr


def test_log_goes_where_slurm_can_write_it():
    """SLURM opens --output before the script runs and creates no folders: a bare file name (the submit dir)."""
    [output] = re.findall(r"^#SBATCH --output=(\S+)$", SBATCH.read_text(), re.M)
    assert "/" not in output


def test_two_local_nodes_really_train(tmp_path):
    data = prepare_data(tmp_path / "data")
    run = tmp_path / "run"
    env = slurm_env(tmp_path, STUB_SRUN_RUN="1", STUB_HOSTS="127.0.0.1", SLURM_GPUS_ON_NODE="1",
                    SLURM_CPUS_PER_TASK="1", MASTER_PORT=str(free_port()), MAX_RESTARTS="0", PYTHONUNBUFFERED="1")
    overrides = tiny_overrides(data, run, **{"parallel.tensor_parallel": 1, "train.steps": 2, "eval.at_end": "false"})
    proc = subprocess.Popen(["bash", str(SBATCH), "configs/quickstart.yaml", *overrides], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == 0, out[-6000:]
    assert "2 nodes x 1 GPUs, OMP_NUM_THREADS=1" in out
    assert "world 2 = DP 2" in out
    assert json.loads((run / "summary.json").read_text())["step"] == 2
