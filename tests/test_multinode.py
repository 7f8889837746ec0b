"""Two nodes simulated on one machine: two torchrun agents, c10d rendezvous on 127.0.0.1 (slow tier).

- a worker killed with SIGKILL mid-run on one node: both agents restart their workers (the node of the dead
  worker counts a restart; the other one usually restarts through torchrun's membership-change path, which
  it does not count, so the nodes' TORCHELASTIC_RESTART_COUNT differ), the job resumes from the last
  checkpoint on both nodes and ends with exactly the losses and final weights of an uninterrupted run;
- a whole node lost (agent and worker killed): the surviving agent ends with a clear error in bounded time.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from launch_utils import free_port, kill_tree
from fault_hooks import fault_env
from train_utils import REPO, TORCHRUN, metrics, prepare_data, tiny_overrides, uninterrupted_run

pytestmark = pytest.mark.slow

# DP=2 with ZeRO-2: each node's rank owns half of the optimizer state, so both nodes must resume correctly
RUN = {"train.zero_stage": 2, "train.steps": 10, "checkpoint.interval": 4, "checkpoint.keep_last": 2}
JOIN_TIMEOUT_S = 15  # how long a lone agent waits in the rendezvous for the lost node


@dataclass
class Agent:
    name: str
    proc: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_agents(run_args: list[str], tmp: Path, max_restarts: int, env: dict[str, str] | None = None) -> list[Agent]:
    """Two torchrun agents of one job (1 worker each); node0 hosts the c10d rendezvous store."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:8]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "LOGLEVEL": "INFO",  # the agents' rounds
           "XLSTM_DIST_TIMEOUT_MIN": "2", "XLSTM_DIST_JOIN_TIMEOUT_S": "60", **(env or {})}
    agents = []
    for node in range(2):
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, "--local-addr", "127.0.0.1",
               "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'},join_timeout={JOIN_TIMEOUT_S}",
               f"--max-restarts={max_restarts}", "--monitor-interval=0.5",
               "-m", "xlstm_pretrain.train", "--resume", "auto", *run_args]
        log = tmp / f"node{node}.log"
        with open(log, "w") as f:  # the agent and its workers write there; start_new_session: one group to kill
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        agents.append(Agent(f"node{node}", proc, log))
    return agents


def kill_node(agent: Agent) -> None:
    """A node loss: SIGKILL the agent and all its workers."""
    kill_tree(agent.proc)


@pytest.fixture
def agents_to_clean():
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            kill_node(agent)


def wait_for(agents: list[Agent], timeout: float) -> list[int | None]:
    """Exit codes of the agents (None for one still running at the deadline)."""
    deadline = time.time() + timeout
    while time.time() < deadline and any(a.proc.poll() is None for a in agents):
        time.sleep(0.5)
    return [a.proc.poll() for a in agents]


def logs(agents: list[Agent]) -> str:
    return "\n".join(f"--- {a.name} ---\n{a.text()[-5000:]}" for a in agents)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    root = run / "checkpoints"
    return load_file(str(root / (root / "latest").read_text().strip() / "consolidated" / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_data(tmp_path_factory.getbasetemp() / "train_data")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The reference: the same job as 2 processes on one node."""
    return uninterrupted_run(data, tmp_path_factory.mktemp("uninterrupted"), 2, RUN)


def test_worker_killed_on_one_node_resumes_the_whole_job(data, uninterrupted, tmp_path, agents_to_clean):
    run = tmp_path / "run"
    # rank 1 SIGKILLs itself right after step 6 (first attempt of its node only); the last checkpoint is step 4
    agents = start_agents(tiny_overrides(data, run, **RUN), tmp_path, max_restarts=1,
                          env=fault_env(kill_at_step=6, kill_rank=1))
    agents_to_clean.extend(agents)
    codes = wait_for(agents, timeout=360)
    assert codes == [0, 0], logs(agents)
    text = "".join(a.text() for a in agents)
    assert "rank 1: SIGKILL after step 6" in text
    assert f"resumed from {run / 'checkpoints' / 'step_00000004'} at step 4" in text
    # both nodes started a second round of workers; the node of the dead worker counted it as a restart
    rounds = [re.findall(r"restart_count=(\d+)", a.text()) for a in agents]
    assert all(len(r) == 2 for r in rounds), rounds
    assert max(int(r[1]) for r in rounds) == 1, rounds
    a, b = metrics(uninterrupted, "train"), metrics(run, "train")
    assert [r["step"] for r in b] == list(range(1, RUN["train.steps"] + 1))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    want, got = final_weights(uninterrupted), final_weights(run)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def training_started(run: Path) -> bool:
    """A first train row in metrics.jsonl (read while it is written: a partial last line is not one)."""
    try:
        return bool(metrics(run, "train"))
    except (FileNotFoundError, ValueError):
        return False


def test_lost_node_ends_the_job_with_a_clear_error(data, tmp_path, agents_to_clean):
    run = tmp_path / "run"
    agents = start_agents(tiny_overrides(data, run, **{**RUN, "train.steps": 200}), tmp_path, max_restarts=1)
    agents_to_clean.extend(agents)
    deadline = time.time() + 240
    while time.time() < deadline and not training_started(run):
        assert all(a.proc.poll() is None for a in agents), logs(agents)
        time.sleep(0.5)
    assert training_started(run), logs(agents)
    lost, survivor = agents[1], agents[0]  # node1 does not host the rendezvous store
    killed_at = time.time()
    kill_node(lost)
    # the survivor's worker fails on the dead peer, its agent waits JOIN_TIMEOUT_S for the node, then gives up
    [code] = wait_for([survivor], timeout=JOIN_TIMEOUT_S + 120)
    text = survivor.text()
    assert code not in (None, 0), text[-5000:]
    assert time.time() - killed_at < JOIN_TIMEOUT_S + 120
    assert "RendezvousTimeoutError" in text, text[-5000:]
    assert metrics(run, "train")[-1]["step"] < 200
