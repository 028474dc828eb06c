"""Benchmark recgym.tree.PrefixTree against the anchors' per-row constrained-decoding mask.

Catalogue: the 17,408 real Amazon Video Games titles of BIGRec (``games-bigrec/id2name.txt`` in the
shared data folder). No Qwen2 tokenizer is available offline, so titles are tokenized by a stand-in
that keeps what matters here, the vocabulary size (V = 151,936) and a realistic tree shape: each
whitespace word of ``'"' + title + '"'`` (the opening quote stays merged with the first word, as BPE
does in context) becomes one token id, a deterministic hash (blake2b) of the word into
[0, 151643), and every title ends with Qwen2's end token 151643.

Decoding states are sampled from the nodes visited by uniform masked random walks from the root
(so every depth appears as often as it does in generation; complete items are excluded: no mask
is needed there). Timed, with ``time.perf_counter`` and medians over many repeats (microseconds):

  (a) ``reference_mask``: what D3/ReRe/MiniOneRec do in ``prefix_allowed_tokens_fn``: a dict from
      the prefix tuple to its list of allowed tokens and a Python loop filling a B x V mask row by
      row (generous: the prefix tuples are precomputed outside the timing);
  (b) ``allowed_tokens``: our CSR index lists;
  (c) ``mask``: our dense B x V int8 mask, new (``np.zeros``) and into a reused buffer (``out=``),
      with the floors: ``np.zeros((B, V), int8)`` alone (lazily zeroed pages: almost free until
      touched) and zeroing a reused B x V buffer (``fill(0)``, a memset); and ``MaskBuffer.update``,
      which rewrites one dense buffer by clearing only the entries it set for the previous batch
      (the batches rotate, so every update clears a different batch's entries), against the cost
      of a usable new array (``np.zeros`` plus one write per row, which makes the pages real), also
      with half the rows all ones and staying so (a vector env's finished slots);
  (d) torch on CPU: ``allowed_padded``, ``allowed`` (CSR), ``mask``, ``step`` and ``torch.zeros``.

Usage: ``python benchmarks/bench_tree.py [--output benchmarks/results/tree.json]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recgym.tree import PrefixTree

VOCAB_SIZE = 151_936  # Qwen2 / Qwen2.5 embedding rows
END_TOKEN = 151_643  # Qwen2 <|endoftext|>; the stand-in hashes words below it


def default_data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("RECGYM_SHARED_DATA", default))


def load_titles(data_dir: Path) -> list[str]:
    path = data_dir / "games-bigrec" / "id2name.txt"
    if not path.is_file():
        sys.exit(
            f"error: {path} not found. This benchmark needs the real Games title catalogue; pass "
            "--data-dir or set RECGYM_SHARED_DATA to the shared data folder."
        )
    pairs = [line.rsplit("\t", 1) for line in path.read_text(encoding="utf-8").split("\n") if line]
    order = np.argsort([int(item) for _, item in pairs])
    return [pairs[i][0] for i in order]


def word_token(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % END_TOKEN


def stand_in_tokenize(title: str) -> list[int]:
    return [word_token(word) for word in f'"{title}"'.split()] + [END_TOKEN]


def reference_table(sequences: list[list[int]]) -> dict[tuple[int, ...], list[int]]:
    """The anchors' lookup table: prefix tuple -> sorted list of allowed next tokens."""
    table: dict[tuple[int, ...], set[int]] = {}
    for sequence in sequences:
        for i, token in enumerate(sequence):
            table.setdefault(tuple(sequence[:i]), set()).add(token)
    return {prefix: sorted(tokens) for prefix, tokens in table.items()}


def reference_mask(table: dict[tuple[int, ...], list[int]], prefixes: list[tuple[int, ...]]) -> np.ndarray:
    mask = np.zeros((len(prefixes), VOCAB_SIZE), dtype=np.int8)
    for i, prefix in enumerate(prefixes):
        mask[i, table[prefix]] = 1
    return mask


def walk_states(tree: PrefixTree, walks: int, rng: np.random.Generator) -> np.ndarray:
    """Every non-terminal node visited by ``walks`` masked uniform random walks (with repeats)."""
    states = tree.initial_states(walks)
    visited = []
    while True:
        live = states[~tree.is_complete(states)]
        if live.size == 0:
            return np.concatenate(visited)
        visited.append(live)
        states = tree.step(live, tree.sample_tokens(live, rng))


def prefix_of(tree: PrefixTree, node: int) -> tuple[int, ...]:
    tokens = []
    while node > 0:
        tokens.append(int(tree.token_in[node]))
        node = int(tree.parent[node])
    return tuple(reversed(tokens))


def median_us(fn: Callable[[int], Any], repeats: int, rotate: int) -> float:
    """Median wall time of ``fn(i)`` in microseconds; ``i`` rotates over ``rotate`` prepared batches."""
    for i in range(min(3, repeats)):  # warm-up
        fn(i % rotate)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn(i % rotate)
        times[i] = time.perf_counter() - start
    return round(float(np.median(times)) * 1e6, 2)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_available"] = len(os.sched_getaffinity(0))
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="shared data folder")
    default_output = Path(__file__).resolve().parent / "results" / "tree.json"
    parser.add_argument("--output", type=Path, default=default_output)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per measurement")
    parser.add_argument("--batches", type=int, default=16, help="distinct state batches to rotate over")
    parser.add_argument("--walks", type=int, default=4000, help="random walks that supply the states")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch measurements")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    titles = load_titles(args.data_dir)
    sequences = [stand_in_tokenize(title) for title in titles]
    start = time.perf_counter()
    tree = PrefixTree(sequences, vocab_size=VOCAB_SIZE)
    build_tree_s = time.perf_counter() - start
    start = time.perf_counter()
    table = reference_table(sequences)
    build_table_s = time.perf_counter() - start
    pool = walk_states(tree, args.walks, rng)

    result: dict[str, Any] = {
        "benchmark": "recgym.tree.PrefixTree constrained-decoding masks",
        "machine": machine_info(),
        "catalogue": {
            "source": "games-bigrec/id2name.txt (BIGRec Amazon 2018 Video Games titles)",
            "items": tree.num_items,
            "tokenization": (
                "stand-in (no Qwen2 tokenizer offline): one token per whitespace word of "
                "'\"' + title + '\"', "
                f"blake2b(word) mod {END_TOKEN}, then end token {END_TOKEN}; vocab_size {VOCAB_SIZE}"
            ),
            "num_nodes": tree.num_nodes,
            "max_depth": tree.max_depth,
            "root_children": int(tree.num_children[0]),
            "max_children": tree.max_children,
            "distinct_sequences": int(tree.is_terminal.sum()),
            "build_prefix_tree_ms": round(build_tree_s * 1e3, 1),
            "build_reference_dict_ms": round(build_table_s * 1e3, 1),
        },
        "states": {
            "source": f"non-terminal nodes visited by {args.walks} masked uniform random walks",
            "seed": args.seed,
            "pool_size": int(pool.size),
            "mean_depth": round(float(tree.depth[pool].mean()), 2),
            "mean_allowed_tokens": round(float(tree.num_children[pool].mean()), 2),
        },
        "timing": {"unit": "microseconds, median", "repeats": args.repeats, "batches_rotated": args.batches},
        "results": {},
    }

    for batch in args.batch_sizes:
        batches = [rng.choice(pool, batch) for _ in range(args.batches)]
        row = numpy_timings(tree, table, batches, args.repeats)
        if not args.no_torch:
            row.update(torch_timings(tree, batches, args.repeats))
        result["results"][f"B={batch}"] = row
        print(f"B={batch}: " + json.dumps(row, indent=1))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return result


def numpy_timings(
    tree: PrefixTree, table: dict[tuple[int, ...], list[int]], batches: list[np.ndarray], repeats: int
) -> dict[str, float]:
    batch, rotate = len(batches[0]), len(batches)
    prefixes = [[prefix_of(tree, int(s)) for s in states] for states in batches]
    buffer = np.zeros((batch, VOCAB_SIZE), dtype=np.int8)
    first_tokens = [tree.child_tokens[tree.child_offsets[states]] for states in batches]
    mask_buffer, half_finished = tree.mask_buffer(batch), tree.mask_buffer(batch)
    finished = np.arange(batch) < batch // 2
    for states, prefix_list in zip(batches, prefixes):  # the implementations agree
        assert np.array_equal(reference_mask(table, prefix_list), tree.mask(states))
        assert np.array_equal(mask_buffer.update(states), tree.mask(states))

    def zeros_one_write_per_row() -> None:
        mask = np.zeros((batch, VOCAB_SIZE), dtype=np.int8)
        mask.reshape(-1)[:: VOCAB_SIZE] = 1

    row = {
        "a_reference_dict_loop_mask": median_us(
            lambda i: reference_mask(table, prefixes[i]), repeats, rotate
        ),
        "b_allowed_tokens_csr": median_us(lambda i: tree.allowed_tokens(batches[i]), repeats, rotate),
        "allowed_padded": median_us(lambda i: tree.allowed_padded(batches[i]), repeats, rotate),
        "c_mask_new": median_us(lambda i: tree.mask(batches[i]), repeats, rotate),
        "c_mask_into_buffer": median_us(lambda i: tree.mask(batches[i], out=buffer), repeats, rotate),
        "c_mask_buffer_update": median_us(lambda i: mask_buffer.update(batches[i]), repeats, rotate),
        # a vector env late in a batch of episodes: half the slots finished (all-ones rows), and
        # they stay finished from one step to the next
        "c_mask_buffer_update_half_finished": median_us(
            lambda i: half_finished.update(batches[i], full=finished), repeats, rotate),
        "floor_np_zeros": median_us(lambda i: np.zeros((batch, VOCAB_SIZE), dtype=np.int8), repeats, rotate),
        "floor_np_zeros_one_write_per_row": median_us(lambda i: zeros_one_write_per_row(), repeats, rotate),
        "floor_buffer_fill0": median_us(lambda i: buffer.fill(0), repeats, rotate),
        "step": median_us(lambda i: tree.step(batches[i], first_tokens[i]), repeats, rotate),
    }
    row["speedup_b_over_a"] = round(row["a_reference_dict_loop_mask"] / row["b_allowed_tokens_csr"], 1)
    row["speedup_mask_new_over_a"] = round(row["a_reference_dict_loop_mask"] / row["c_mask_new"], 1)
    row["mask_new_over_np_zeros"] = round(row["c_mask_new"] / row["floor_np_zeros"], 2)
    row["mask_new_over_zeros_one_write_per_row"] = round(
        row["c_mask_new"] / row["floor_np_zeros_one_write_per_row"], 2
    )
    row["mask_into_buffer_over_fill0"] = round(row["c_mask_into_buffer"] / row["floor_buffer_fill0"], 2)
    row["mask_buffer_update_over_zeros_one_write_per_row"] = round(
        row["c_mask_buffer_update"] / row["floor_np_zeros_one_write_per_row"], 2
    )
    row["mask_buffer_update_over_np_zeros"] = round(row["c_mask_buffer_update"] / row["floor_np_zeros"], 2)
    return row


def torch_timings(tree: PrefixTree, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    import torch

    tables = tree.torch_tables("cpu")
    states = [torch.from_numpy(s) for s in batches]
    tokens = [torch.from_numpy(tree.child_tokens[tree.child_offsets[s]]) for s in batches]
    for s in states:  # torch and numpy agree
        assert torch.equal(tables.mask(s), torch.from_numpy(tree.mask(s.numpy(), dtype=bool)))
    batch, rotate = len(batches[0]), len(batches)
    return {
        "d_torch_allowed_padded": median_us(lambda i: tables.allowed_padded(states[i]), repeats, rotate),
        "d_torch_allowed_padded_fixed_width": median_us(
            lambda i: tables.allowed_padded(states[i], tree.max_children), repeats, rotate
        ),
        "d_torch_allowed_csr": median_us(lambda i: tables.allowed(states[i]), repeats, rotate),
        "d_torch_mask": median_us(lambda i: tables.mask(states[i]), repeats, rotate),
        "d_torch_step": median_us(lambda i: tables.step(states[i], tokens[i]), repeats, rotate),
        "floor_torch_zeros_bool": median_us(
            lambda i: torch.zeros(batch, tree.vocab_size, dtype=torch.bool), repeats, rotate
        ),
    }


if __name__ == "__main__":
    main()
