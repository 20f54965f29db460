"""vLLM-facing settings of the paper profile, and determinism switched off for the agent stages."""

from __future__ import annotations

import pytest
import torch

from hxpe.agent.backend_vllm import engine_kwargs
from hxpe.config import load_config
from hxpe.paths import repo_root
from hxpe.pipeline import notebook_setup

PAPER = repo_root() / "notebooks" / "params" / "paper.yaml"


def test_paper_profile_keeps_vllms_batch_full():
    agent = load_config(PAPER).agent
    assert agent.describe.batch_size >= 256 and agent.extract.batch_size >= 256
    assert agent.describe.options["max_num_seqs"] == 32
    kwargs = engine_kwargs(agent.describe, multimodal=True)
    assert kwargs["limit_mm_per_prompt"] == {"image": 2, "video": 0}


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize(
    ("stage", "deterministic"),
    [("describe", False), ("extract", False), ("train", True), ("evaluate", True)],
)
def test_deterministic_mode_is_off_only_for_the_agent_stages(
    stage, deterministic, restore_determinism
):
    torch.use_deterministic_algorithms(True)  # as an earlier stage in this process would leave it
    cfg = notebook_setup(PAPER, stage)
    assert cfg.deterministic is True  # the profile asks for it ...
    assert torch.are_deterministic_algorithms_enabled() is deterministic  # ... outside the agent
