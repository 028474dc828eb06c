"""The prefix tree of all catalogue items, stored as flat numpy arrays (CSR) for batched lookups.

Every item is a sequence of token ids (its title in context, or its semantic-ID codes) that ends in
an end token. Generating an item token by token walks this tree from the root; the tokens allowed
at a node are its children. Nodes are ints (root 0), so a batch of decoding states is an int array
and every query below is a handful of vectorized numpy operations, never a Python loop per row:
the per-beam loop in ``prefix_allowed_tokens_fn`` is the main cost of constrained decoding in the
D3/ReRe/MiniOneRec code this package replaces.

Nodes are numbered breadth-first, and within a depth by (parent, token). Hence the children of a
node are contiguous, sorted by token, and ``node * vocab_size + token`` over all non-root nodes is
one sorted key array (``step`` is a single ``np.searchsorted``).

:meth:`PrefixTree.torch_tables` copies the tables to a torch device, so that an LLM policy builds
masks (or gathers only the allowed output-embedding rows) where its logits live. torch is imported
only there: ``import recgym`` stays torch-free.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recgym._checks import check_int

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
WIDE_NODE_CHILDREN = 256  # nodes at least this wide get a cached dense mask row
MAX_WIDE_NODES = 16  # at most this many cached rows (16 x V bytes)


def _gather_csr(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``values[starts[i] : starts[i] + counts[i]]`` for all i, as CSR (offsets, values)."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], counts)
    index += np.arange(offsets[-1])
    return offsets, values[index]


class PrefixTree:
    """Prefix tree over the token sequences of catalogue items, with batched (vectorized) queries.

    Args:
        sequences: one full token sequence per item, *including* its end token (e.g. eos), so that
            no sequence is a strict prefix of another. Several items may share a sequence (titles
            are not unique): its terminal node then denotes a set of item ids.
        item_ids: the id of each sequence's item (default ``0 .. len(sequences) - 1``); unique.
        vocab_size: size of the token vocabulary; every token must lie in ``[0, vocab_size)``.

    Attributes (read-only numpy arrays, indexed by node unless said otherwise):
        ``parent``, ``token_in`` (the token on the edge from the parent; -1 at the root),
        ``depth``, ``num_children``, ``branches`` (>= 2 children), ``is_terminal`` (a complete item;
        terminal nodes have no children, every other node has at least one), CSR children
        ``child_offsets`` (num_nodes + 1) / ``child_tokens`` (sorted per node) / ``child_nodes``,
        CSR items of terminal nodes ``item_offsets`` / ``item_values`` (sorted ids),
        ``item_ids`` / ``item_nodes`` (per input sequence: its id and terminal node),
        ``tokens_in_tree`` (sorted tokens used anywhere). Scalars: ``num_nodes``, ``num_items``,
        ``vocab_size``, ``max_depth``, ``max_children``.

    States passed to the queries must be node ids in ``[0, num_nodes)`` (else ``ValueError``).

    Example:
        >>> eos = 9
        >>> tree = PrefixTree([[1, 2, eos], [1, 3, eos], [1, 2, eos], [1, eos]], vocab_size=10)
        >>> tree.num_items, tree.num_nodes, tree.max_depth
        (4, 7, 3)
        >>> node = tree.walk([1])
        >>> tree.allowed_tokens([tree.root, node])
        (array([0, 1, 4]), array([1, 2, 3, 9]))
        >>> leaf = tree.walk([1, 2, eos])
        >>> bool(tree.is_complete([leaf])[0]), tree.items(leaf)
        (True, array([0, 2]))
        >>> tree.sequence_of(1)
        array([1, 3, 9])
    """

    def __init__(
        self, sequences: Sequence[Sequence[int]], item_ids: Sequence[int] | None = None, *, vocab_size: int
    ) -> None:
        vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        n = len(sequences)
        if n == 0:
            raise ValueError("a prefix tree needs at least one sequence")
        ids = np.arange(n, dtype=np.int64) if item_ids is None else _as_int_array(item_ids, "item_ids")
        if ids.shape != (n,):
            raise ValueError(f"got {n} sequences but item_ids has shape {ids.shape}")
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)
        if (lengths == 0).any():
            i = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"sequence {i} (item id {ids[i]}) is empty")
        flat = _as_int_array(list(itertools.chain.from_iterable(sequences)), "sequences")
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        bad = (flat < 0) | (flat >= vocab_size)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            i = int(np.searchsorted(starts, pos, side="right")) - 1
            raise ValueError(
                f"sequence {i} (item id {ids[i]}) has token {flat[pos]} at position {pos - starts[i]}, "
                f"outside [0, vocab_size={vocab_size})"
            )

        # Build level by level: at depth d the active items (length > d, the first `k` of `by_length`)
        # each extend their current node by one token; each distinct (node, token) key is a new node.
        by_length = np.argsort(-lengths, kind="stable")
        sorted_lengths = lengths[by_length]
        current = np.zeros(n, dtype=np.int64)
        parents, tokens, depths = [np.array([-1])], [np.array([-1])], [np.array([0])]
        num_nodes = 1
        for d in range(int(lengths.max())):
            k = int(np.searchsorted(-sorted_lengths, -d, side="left"))  # number of items with length > d
            active = by_length[:k]
            keys = current[active] * vocab_size + flat[starts[active] + d]
            unique_keys, inverse = np.unique(keys, return_inverse=True)
            parents.append(unique_keys // vocab_size)
            tokens.append(unique_keys % vocab_size)
            depths.append(np.full(len(unique_keys), d + 1))
            current[active] = num_nodes + inverse.reshape(-1)
            num_nodes += len(unique_keys)
        self._init_from_nodes(
            np.concatenate(parents), np.concatenate(tokens), np.concatenate(depths), ids, current, vocab_size
        )

    def _init_from_nodes(
        self,
        parent: np.ndarray,
        token_in: np.ndarray,
        depth: np.ndarray,
        item_ids: np.ndarray,
        item_nodes: np.ndarray,
        vocab_size: int,
    ) -> None:
        """Derive every table from the node list (shared by ``__init__`` and :meth:`load`)."""
        self.vocab_size = int(vocab_size)
        self.num_nodes = len(parent)
        self.num_items = len(item_ids)
        self.parent = parent.astype(np.int64)
        self.token_in = token_in.astype(np.int64)
        self.depth = depth.astype(np.int64)
        self.item_ids = item_ids.astype(np.int64)
        self.item_nodes = item_nodes.astype(np.int64)
        self.num_children = np.bincount(self.parent[1:], minlength=self.num_nodes).astype(np.int64)
        self.child_offsets = np.zeros(self.num_nodes + 1, dtype=np.int64)
        np.cumsum(self.num_children, out=self.child_offsets[1:])
        self.child_tokens = self.token_in[1:].copy()
        self.child_nodes = np.arange(1, self.num_nodes, dtype=np.int64)
        self._keys = self.parent[1:] * self.vocab_size + self.child_tokens
        self.branches = self.num_children >= 2
        self.is_terminal = np.zeros(self.num_nodes, dtype=bool)
        self.is_terminal[self.item_nodes] = True
        order = np.lexsort((self.item_ids, self.item_nodes))
        self.item_values = self.item_ids[order]
        self.item_offsets = np.searchsorted(self.item_nodes[order], np.arange(self.num_nodes + 1))
        self._ids_order = np.argsort(self.item_ids, kind="stable")
        self._sorted_ids = self.item_ids[self._ids_order]
        self.tokens_in_tree = np.unique(self.child_tokens)
        self.max_depth = int(self.depth.max())
        self.max_children = int(self.num_children.max())
        self._items_under: np.ndarray | None = None  # built on first use (covered_nodes)
        self._torch_cache: dict[str, TorchPrefixTree] = {}
        self._wide: tuple[np.ndarray, np.ndarray] | None = None
        self._check_invariants()
        for name in _PUBLIC_ARRAYS + ("_keys", "_ids_order", "_sorted_ids"):
            getattr(self, name).flags.writeable = False

    def _check_invariants(self) -> None:
        """Raise ``ValueError`` unless the tables describe a well-formed tree (cheap, vectorized)."""
        if len(self._sorted_ids) > 1 and (np.diff(self._sorted_ids) == 0).any():
            dup = self._sorted_ids[np.flatnonzero(np.diff(self._sorted_ids) == 0)[0]]
            raise ValueError(f"item id {dup} appears more than once in item_ids")
        inner = self.is_terminal & (self.num_children > 0)
        if inner.any():
            items = self.item_values[self.item_offsets[np.flatnonzero(inner)[0]]]
            raise ValueError(
                f"the sequence of item id {items} is a strict prefix of another sequence; "
                "end every sequence with an end token (e.g. eos)"
            )
        if ((~self.is_terminal) & (self.num_children == 0)).any():  # never an empty allowed set
            raise ValueError("corrupt tree: a node that is not a complete item has no children")
        keys_ok = len(self._keys) < 2 or bool((np.diff(self._keys) > 0).all())
        if not keys_ok or self.parent[0] != -1 or (self.parent[1:] >= np.arange(1, self.num_nodes)).any():
            raise ValueError("corrupt tree: nodes are not in breadth-first (parent, token) order")

    # ----------------------------------------------------------------------------------------------
    # Basic queries

    @property
    def root(self) -> int:
        """The root node (the empty prefix): always 0."""
        return 0

    def initial_states(self, batch: int) -> np.ndarray:
        """``batch`` root states.

        >>> PrefixTree([[1, 0]], vocab_size=2).initial_states(3)
        array([0, 0, 0])
        """
        return np.zeros(check_int(batch, "batch", minimum=0), dtype=np.int64)

    def _states(self, states: Any, *, batch: bool = False, name: str = "states") -> np.ndarray:
        s = _as_int_array(states, name)
        if batch and s.ndim != 1:
            raise ValueError(f"{name} must be a 1-D batch of nodes, got shape {s.shape}")
        # One reduction catches both ends: negative int64 values are huge as uint64.
        if s.size and s.view(np.uint64).max() >= self.num_nodes:
            bad = s[(s < 0) | (s >= self.num_nodes)][0]
            raise ValueError(f"state {bad} is not a node of this tree (num_nodes={self.num_nodes})")
        return s

    def is_complete(self, states: Any) -> np.ndarray:
        """Whether each state is a terminal node (a complete item); same shape as ``states``."""
        return self.is_terminal[self._states(states)]

    def branching(self, states: Any) -> np.ndarray:
        """Whether each node has >= 2 children, i.e. a token generated from it was a real choice.

        RISER's certainty-aware mask keeps the loss only on tokens generated from branching nodes.

        >>> tree = PrefixTree([[1, 2, 0], [1, 3, 0]], vocab_size=4)
        >>> tree.branching([tree.root, tree.walk([1])])
        array([False,  True])
        """
        return self.branches[self._states(states)]

    def items(self, state: int) -> np.ndarray:
        """Sorted item ids denoted by one node (empty unless the node is terminal)."""
        s = int(self._states(state))
        return self.item_values[self.item_offsets[s] : self.item_offsets[s + 1]]

    def items_batch(self, states: Any) -> tuple[np.ndarray, np.ndarray]:
        """Item ids of a batch of nodes as CSR: row i is ``values[offsets[i]:offsets[i + 1]]``."""
        s = self._states(states, batch=True)
        starts = self.item_offsets[s]
        return _gather_csr(self.item_values, starts, self.item_offsets[s + 1] - starts)

    def allowed_tokens(self, states: Any) -> tuple[np.ndarray, np.ndarray]:
        """Allowed next tokens of a batch of nodes as CSR ``(offsets [B + 1], tokens)``, sorted per row.

        >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
        >>> offsets, tokens = tree.allowed_tokens([0, tree.walk([5])])
        >>> tokens[offsets[0] : offsets[1]], tokens[offsets[1] : offsets[2]]
        (array([5, 7]), array([1, 2]))
        """
        s = self._states(states, batch=True)
        return _gather_csr(self.child_tokens, self.child_offsets[s], self.num_children[s])

    def allowed_padded(
        self, states: Any, width: int | None = None, pad: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Allowed tokens as a padded ``(tokens [B, width], valid [B, width])`` pair.

        ``width`` defaults to the largest child count among ``states``; padding entries hold ``pad``.

        >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
        >>> tree.allowed_padded([0, tree.walk([7])])
        (array([[ 5,  7],
               [ 0, -1]]), array([[ True,  True],
               [ True, False]]))
        """
        s = self._states(states, batch=True)
        pad = check_int(pad, "pad")
        counts = self.num_children[s]
        needed = int(counts.max()) if s.size else 0
        width = needed if width is None else check_int(width, "width", minimum=0)
        if width < needed:
            raise ValueError(f"width={width} would drop allowed tokens: a state has {needed} children")
        valid = np.arange(width) < counts[:, None]
        tokens = np.full((len(s), width), pad, dtype=np.int64)
        tokens[valid] = _gather_csr(self.child_tokens, self.child_offsets[s], counts)[1]  # row-major order
        return tokens, valid

    def mask(self, states: Any, out: np.ndarray | None = None, dtype: Any = np.int8) -> np.ndarray:
        """Dense ``[B, vocab_size]`` action mask (1 where allowed), e.g. for Gymnasium or MaskablePPO.

        Pass ``out`` (a ``[B, vocab_size]`` array, overwritten) to reuse a buffer across steps.
        Complete states get an all-zero row.

        >>> PrefixTree([[2, 0], [3, 0]], vocab_size=4).mask([0])
        array([[0, 0, 1, 1]], dtype=int8)
        """
        s = self._states(states, batch=True)
        if out is None:
            out = np.zeros((len(s), self.vocab_size), dtype=dtype)
        else:
            if out.shape != (len(s), self.vocab_size):
                raise ValueError(f"out has shape {out.shape}, expected {(len(s), self.vocab_size)}")
            out.fill(0)
        # The few widest nodes (the root of a title tree allows thousands of first words) have
        # precomputed dense rows: one broadcast copy per distinct wide node in the batch replaces
        # thousands of scattered writes and their index arithmetic.
        wide_nodes, wide_rows = self._wide_rows()
        slot = np.searchsorted(wide_nodes, s)
        is_wide = (slot < len(wide_nodes)) & (wide_nodes[np.minimum(slot, len(wide_nodes) - 1)] == s) \
            if len(wide_nodes) else np.zeros(len(s), bool)
        for j in np.unique(slot[is_wide]).tolist():  # loops over distinct wide nodes, not rows
            out[is_wide & (slot == j)] = wide_rows[j]
        narrow = np.flatnonzero(~is_wide)
        flat_index = self._flat_allowed(s[narrow], narrow)
        # Assigning through a flat view is ~4x faster than 2-D fancy indexing (one index array).
        flat = out.reshape(-1) if out.flags.c_contiguous else None
        if flat is None:
            out[flat_index // self.vocab_size, flat_index % self.vocab_size] = 1
        else:
            flat[flat_index] = 1
        return out

    def mask_buffer(self, batch: int, dtype: Any = np.int8) -> MaskBuffer:
        """A reusable ``[batch, vocab_size]`` mask that clears only what it set (:class:`MaskBuffer`)."""
        return MaskBuffer(self, batch, dtype)

    def _flat_allowed(self, states: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Flat positions ``row * vocab_size + token`` of the allowed tokens of ``states`` in ``rows``."""
        counts = self.num_children[states]
        _, flat_index = _gather_csr(self.child_tokens, self.child_offsets[states], counts)
        flat_index += np.repeat(rows * self.vocab_size, counts)
        return flat_index

    def _wide_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ids of the (at most 16) widest nodes with >= 256 children and their dense rows."""
        if self._wide is None:
            candidates = np.flatnonzero(self.num_children >= WIDE_NODE_CHILDREN)
            widest = candidates[np.argsort(-self.num_children[candidates], kind="stable")][:MAX_WIDE_NODES]
            nodes = np.sort(widest)
            rows = np.zeros((len(nodes), self.vocab_size), dtype=bool)
            for j, node in enumerate(nodes.tolist()):  # once per wide node, at first use
                rows[j, self.child_tokens[self.child_offsets[node]:self.child_offsets[node + 1]]] = True
            self._wide = (nodes, rows)
        return self._wide

    def step(self, states: Any, tokens: Any) -> np.ndarray:
        """Next node after each (state, token); -1 where the token is not an allowed child.

        Tokens outside ``[0, vocab_size)`` are simply not allowed (-1).

        >>> tree = PrefixTree([[5, 1, 0], [7, 0]], vocab_size=8)
        >>> tree.step([0, 0, 0], [5, 7, 1])
        array([ 1,  2, -1])
        """
        s = self._states(states)
        t = _as_int_array(tokens, "tokens")
        in_vocab = (t >= 0) & (t < self.vocab_size)
        keys = s * self.vocab_size + np.where(in_vocab, t, 0)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return np.where(in_vocab & (self._keys[pos] == keys), self.child_nodes[pos], -1)

    def is_valid(self, states: Any, tokens: Any) -> np.ndarray:
        """Whether each token is an allowed child of its state."""
        return self.step(states, tokens) >= 0

    def sample_tokens(self, states: Any, rng: np.random.Generator) -> np.ndarray:
        """One uniformly random allowed token per state (-1 for complete states): a random agent.

        Cheaper than sampling from a dense mask (Gymnasium's ``Discrete.sample(mask=...)``).
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        s = self._states(states)
        counts = self.num_children[s]
        index = self.child_offsets[s] + (rng.random(s.shape) * counts).astype(np.int64)
        return np.where(counts > 0, self.child_tokens[np.minimum(index, len(self.child_tokens) - 1)], -1)

    def _subtree_items(self) -> np.ndarray:
        """Items in each node's subtree, summed up the parent pointers one depth level at a time
        (nodes are in breadth-first order, so each level is a contiguous range); cached."""
        if self._items_under is None:
            under = np.diff(self.item_offsets)
            bounds = np.searchsorted(self.depth, np.arange(self.max_depth + 2))
            for d in range(self.max_depth, 0, -1):
                level = slice(bounds[d], bounds[d + 1])
                np.add.at(under, self.parent[level], under[level])
            under.flags.writeable = False
            self._items_under = under
        return self._items_under

    def covered_nodes(self, item_sets: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per row of item ids, the nodes all of whose items are in the row, as ``(rows, nodes)``.

        A search that must never return a row's items (e.g. the user's history) prunes exactly
        these nodes: every item under such a node is in the row, so pruning it loses no other
        item, while a node that also leads to another item stays. ``item_sets`` is ``[B, H]``,
        padded with -1 (repeats count once); an id outside the catalogue is a KeyError. The pairs
        come sorted by (row, node), so ``rows * num_nodes + nodes`` is a sorted lookup key.

        Example:
            >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
            >>> rows, nodes = tree.covered_nodes([[0, -1], [1, 0]])
            >>> rows.tolist()
            [0, 0, 1, 1, 1, 1, 1]
            >>> [tree.paths([n])[0, : tree.depth[n]].tolist() for n in nodes[rows == 1]]  # not [7, 0]
            [[5], [5, 1], [5, 2], [5, 1, 0], [5, 2, 0]]
        """
        ids = _as_int_array(item_sets, "item_sets")
        if ids.ndim != 2:
            raise ValueError(f"item_sets must be [B, H] item ids padded with -1, got shape {ids.shape}")
        ids = np.sort(np.where(ids < 0, -1, ids), axis=1)
        keep = ids >= 0
        keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # each item once per row
        rows, cols = np.nonzero(keep)
        values = ids[rows, cols]
        pos = np.minimum(np.searchsorted(self._sorted_ids, values), self.num_items - 1)
        unknown = self._sorted_ids[pos] != values
        if unknown.any():
            raise KeyError(f"item_sets row {rows[unknown][0]}: unknown item id {values[unknown][0]}")
        # Every (row, node) on the path of each of the row's items; a node is covered when the row
        # reaches it through as many items as its subtree holds.
        node, keys = self.item_nodes[self._ids_order[pos]], []
        while len(node):
            keys.append(rows * self.num_nodes + node)
            up = node != self.root
            rows, node = rows[up], self.parent[node[up]]
        flat, count = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
        node = flat % self.num_nodes
        covered = flat[count == self._subtree_items()[node]]
        return covered // self.num_nodes, covered % self.num_nodes

    # ----------------------------------------------------------------------------------------------
    # Paths

    def walk(self, tokens: Sequence[int]) -> int:
        """The node reached from the root by a token sequence, or -1 if it leaves the tree."""
        node = 0
        for token in tokens:
            node = int(self.step(node, token))
            if node < 0:
                return -1
        return node

    def sequence_of(self, item_id: int) -> np.ndarray:
        """The token sequence (with its end token) of one item, rebuilt from parent pointers."""
        item_id = check_int(item_id, "item_id")
        i = int(np.searchsorted(self._sorted_ids, item_id))
        if i == self.num_items or self._sorted_ids[i] != item_id:
            raise KeyError(f"unknown item id {item_id}")
        node = int(self.item_nodes[self._ids_order[i]])
        path = np.empty(int(self.depth[node]), dtype=np.int64)
        for d in range(len(path) - 1, -1, -1):
            path[d] = self.token_in[node]
            node = int(self.parent[node])
        return path

    def paths(self, nodes: Any, pad: int = -1) -> np.ndarray:
        """Token sequences from the root to ``nodes``, right-padded with ``pad``: ``[B, max_depth]``.

        Vectorized over nodes (one pass per depth level, up the parent pointers).

        Example:
            >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
            >>> tree.paths([tree.walk([5, 2, 0]), tree.walk([7])]).tolist()
            [[5, 2, 0], [7, -1, -1]]
        """
        nodes = self._states(nodes, name="nodes").reshape(-1)
        pad = check_int(pad, "pad")
        depth = self.depth[nodes]
        out = np.full((len(nodes), self.max_depth), pad, dtype=np.int64)
        current = nodes.copy()
        for up in range(int(depth.max()) if len(nodes) else 0):
            col = depth - 1 - up
            here = col >= 0
            out[here, col[here]] = self.token_in[current[here]]
            current[here] = self.parent[current[here]]
        return out

    def path_states(self, tokens: Any, pad: int = -1) -> np.ndarray:
        """The node each token was generated from, for ``[B, T]`` (or ``[T]``) token sequences.

        Rows are sequences from the root, right-padded with ``pad`` (-1 in the output). Loops over
        the T positions, never over rows. Raises ``ValueError`` if a sequence leaves the tree.

        >>> tree = PrefixTree([[1, 2, 0], [1, 3, 0]], vocab_size=4)
        >>> tree.path_states([[1, 2, 0], [1, 3, -1]])
        array([[ 0,  1,  2],
               [ 0,  1, -1]])
        """
        t = _as_int_array(tokens, "tokens")
        pad = check_int(pad, "pad")
        flat = t.ndim == 1
        t = np.atleast_2d(t)
        if t.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T] or [T], got {t.shape}")
        out = np.full(t.shape, -1, dtype=np.int64)
        node = np.zeros(len(t), dtype=np.int64)
        ended = np.zeros(len(t), dtype=bool)
        for j in range(t.shape[1]):
            real = t[:, j] != pad
            if (real & ended).any():
                raise ValueError(f"row {np.flatnonzero(real & ended)[0]}: a token follows padding")
            ended |= ~real
            nxt = self.step(node, np.where(real, t[:, j], 0))
            lost = real & (nxt < 0)
            if lost.any():
                i = int(np.flatnonzero(lost)[0])
                raise ValueError(f"row {i}: token {t[i, j]} at position {j} leaves the prefix tree")
            out[:, j] = np.where(real, node, -1)
            node = np.where(real, nxt, node)
        return out[0] if flat else out

    def path_branching(self, tokens: Any, pad: int = -1) -> np.ndarray:
        """Per generated token: was it generated from a branching node (False at padding)?

        >>> PrefixTree([[1, 2, 0], [1, 3, 0]], vocab_size=4).path_branching([1, 2, 0])
        array([False,  True, False])
        """
        states = self.path_states(tokens, pad)
        return (states >= 0) & self.branches[np.maximum(states, 0)]

    # ----------------------------------------------------------------------------------------------
    # Devices and files

    def torch_tables(self, device: Any = None) -> TorchPrefixTree:
        """The tables as torch tensors on ``device`` (cached per device)."""
        import torch

        dev = torch.device(device if device is not None else "cpu")
        if str(dev) not in self._torch_cache:
            self._torch_cache[str(dev)] = TorchPrefixTree.from_tree(self, dev)
        return self._torch_cache[str(dev)]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tree to an ``.npz`` file atomically (temporary file, then ``os.replace``)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                arrays = {name: getattr(self, name) for name in _SAVED_ARRAYS}
                np.savez(f, format_version=FORMAT_VERSION, vocab_size=self.vocab_size, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrefixTree:
        """Read a tree written by :meth:`save`.

        >>> import tempfile, pathlib
        >>> tree = PrefixTree([[1, 2, 0], [1, 0]], vocab_size=3)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     tree.save(pathlib.Path(d) / "tree.npz")
        ...     PrefixTree.load(pathlib.Path(d) / "tree.npz")
        PrefixTree(num_items=2, num_nodes=5, vocab_size=3, max_depth=3)
        """
        with np.load(path) as data:
            version = int(data["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"{path}: tree format version {version}, expected {FORMAT_VERSION}")
            tree = cls.__new__(cls)
            tree._init_from_nodes(*(data[name] for name in _SAVED_ARRAYS), int(data["vocab_size"]))
        return tree

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_torch_cache"] = {}  # device tensors do not travel to subprocesses
        state["_wide"] = None  # rebuilt on first use
        return state

    def __repr__(self) -> str:
        return (
            f"PrefixTree(num_items={self.num_items}, num_nodes={self.num_nodes}, "
            f"vocab_size={self.vocab_size}, max_depth={self.max_depth})"
        )


class MaskBuffer:
    """A dense ``[batch, vocab_size]`` mask, rewritten in place for each new batch of states.

    Zeroing a ``B x V`` array is a memset of ``B * V`` bytes (9.7 MB for 64 rows of a Qwen2
    vocabulary) while only ``sum(children)`` entries are ever 1. The buffer remembers the positions
    it set and clears just those before setting the next ones, so an update costs
    ``O(allowed tokens)``, below the cost of allocating a fresh dense mask. The returned array is the
    buffer itself: the next :meth:`update` overwrites it (copy it to keep it), and it is for reading
    only (entries the caller writes are not tracked, so they would survive). Use it in a decoding
    or env loop that needs vocabulary-wide masks (e.g. a CPU logits processor); fresh arrays come
    from :meth:`PrefixTree.mask`.

    Args:
        tree: the prefix tree.
        batch: the number of rows (states per update).
        dtype: the mask's dtype (int8 by default; bool works too).

    Example:
        >>> tree = PrefixTree([[2, 0], [3, 0]], vocab_size=4)
        >>> masks = tree.mask_buffer(2)
        >>> masks.update([0, tree.walk([2])])
        array([[0, 0, 1, 1],
               [1, 0, 0, 0]], dtype=int8)
        >>> masks.update([tree.walk([3]), tree.walk([3, 0])])  # a complete state: all zero
        array([[1, 0, 0, 0],
               [0, 0, 0, 0]], dtype=int8)
    """

    def __init__(self, tree: PrefixTree, batch: int, dtype: Any = np.int8) -> None:
        batch = check_int(batch, "batch", minimum=1)
        self.tree = tree
        self.array = np.zeros((batch, tree.vocab_size), dtype=dtype)
        self._flat = self.array.reshape(-1)  # a view: the array is C-contiguous
        self._set = np.empty(0, dtype=np.int64)  # flat positions that hold a 1
        self._full = np.zeros(batch, dtype=bool)  # rows that are all 1

    def update(self, states: Any, full: Any = None) -> np.ndarray:
        """Rewrite the buffer as the masks of ``states`` (``batch`` node ids) and return it.

        ``full`` (optional, ``batch`` booleans) marks rows to set entirely to 1 instead, whatever
        their state: e.g. a vector env's finished slots, whose actions are ignored.
        """
        s = self.tree._states(states, batch=True)
        if len(s) != len(self.array):
            raise ValueError(f"states has {len(s)} entries, the buffer has {len(self.array)} rows")
        if full is None:
            full = np.zeros(len(s), dtype=bool)
        else:
            full = np.asarray(full)
            if full.shape != s.shape or full.dtype != bool:
                raise ValueError(f"full must be {len(s)} booleans, got shape {full.shape} dtype {full.dtype}")
        # Rows full before and now stay as they are (a finished slot stays finished for many
        # steps): only rows that change between full and not are rewritten whole.
        self._flat[self._set] = 0
        self.array[self._full & ~full] = 0
        rows = np.flatnonzero(~full)
        self._set = self.tree._flat_allowed(s[rows], rows)
        self._flat[self._set] = 1
        self.array[full & ~self._full] = 1
        self._full = full.copy()
        return self.array


_SAVED_ARRAYS = ("parent", "token_in", "depth", "item_ids", "item_nodes")  # _init_from_nodes' order
_PUBLIC_ARRAYS = (
    "parent", "token_in", "depth", "item_ids", "item_nodes", "num_children", "child_offsets", "child_tokens",
    "child_nodes", "branches", "is_terminal", "item_values", "item_offsets", "tokens_in_tree",
)


def _as_int_array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == np.int64:
        return array
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class TorchPrefixTree:
    """A :class:`PrefixTree`'s tables as int64 tensors on one device, for masks next to the logits.

    Built by :meth:`PrefixTree.torch_tables`. States and tokens are int64 tensors on the same device.
    States are *not* range-checked here (that would cost a device sync); pass node ids.

    Example:
        >>> import torch
        >>> tree = PrefixTree([[5, 1, 0], [5, 2, 0], [7, 0]], vocab_size=8)
        >>> tables = tree.torch_tables("cpu")
        >>> tokens, valid = tables.allowed_padded(torch.tensor([0, 1]))
        >>> tokens.tolist(), valid.tolist()
        ([[5, 7], [1, 2]], [[True, True], [True, True]])
        >>> tables.step(torch.tensor([0, 0]), torch.tensor([7, 3])).tolist()
        [2, -1]
    """

    child_offsets: torch.Tensor
    child_tokens: torch.Tensor
    child_nodes: torch.Tensor
    keys: torch.Tensor
    num_children: torch.Tensor
    branches: torch.Tensor
    is_terminal: torch.Tensor
    vocab_size: int
    max_children: int

    @classmethod
    def from_tree(cls, tree: PrefixTree, device: Any = None) -> TorchPrefixTree:
        import torch

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a)).to(device)

        arrays = (tree.child_offsets, tree.child_tokens, tree.child_nodes, tree._keys)
        flags = (tree.num_children, tree.branches, tree.is_terminal)
        return cls(*map(tensor, arrays + flags), tree.vocab_size, tree.max_children)

    def allowed(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed tokens as CSR ``(offsets [B + 1], tokens)``, like :meth:`PrefixTree.allowed_tokens`."""
        import torch

        counts = self.num_children[states]
        offsets = torch.zeros(len(states) + 1, dtype=torch.int64, device=states.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        total = int(offsets[-1])
        index = torch.repeat_interleave(self.child_offsets[states] - offsets[:-1], counts, output_size=total)
        index += torch.arange(total, device=states.device)
        return offsets, self.child_tokens[index]

    def allowed_padded(
        self, states: torch.Tensor, width: int | None = None, pad: int = -1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed tokens padded to ``(tokens [B, width], valid [B, width])``.

        ``width`` defaults to the largest child count among ``states`` (one device sync); pass a
        fixed width (``max_children`` is always enough) to avoid the sync. A smaller width than a
        state's child count is not checked and would drop allowed tokens. Gather output-embedding
        rows with ``tokens.clamp_min(0)`` and mask the padding with ``valid``.
        """
        import torch

        counts = self.num_children[states]
        if width is None:
            width = int(counts.max()) if states.numel() else 0
        columns = torch.arange(width, device=states.device)
        valid = columns < counts[:, None]
        index = torch.where(valid, self.child_offsets[states][:, None] + columns, 0)
        tokens = torch.where(valid, self.child_tokens[index], pad)
        return tokens, valid

    def mask(self, states: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """Dense boolean ``[B, vocab_size]`` mask (True where allowed); all False for complete states.

        ``vocab_size`` may exceed the tree's (a model's padded embedding matrix). One device sync
        (the number of allowed tokens); a CSR scatter, since padding to the widest node (the root
        may allow thousands of tokens) would cost far more.
        """
        import torch

        vocab_size = vocab_size or self.vocab_size
        if vocab_size < self.vocab_size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the tree's {self.vocab_size}")
        offsets, tokens = self.allowed(states)
        rows = torch.arange(len(states), device=states.device) * vocab_size
        flat_index = tokens + torch.repeat_interleave(rows, offsets.diff(), output_size=len(tokens))
        out = torch.zeros(len(states), vocab_size, dtype=torch.bool, device=states.device)
        out.view(-1)[flat_index] = True  # positions are distinct: deterministic
        return out

    def step(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next node after each (state, token), -1 where not allowed (like :meth:`PrefixTree.step`)."""
        import torch

        states, tokens = states.long(), tokens.long()  # int32 keys would overflow
        in_vocab = (tokens >= 0) & (tokens < self.vocab_size)
        keys = states * self.vocab_size + torch.where(in_vocab, tokens, 0)
        pos = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        return torch.where(in_vocab & (self.keys[pos] == keys), self.child_nodes[pos], -1)

    def is_complete(self, states: torch.Tensor) -> torch.Tensor:
        """Whether each state is a complete item (a terminal node)."""
        return self.is_terminal[states]

    def branching(self, states: torch.Tensor) -> torch.Tensor:
        """Whether each node has >= 2 children (see :meth:`PrefixTree.branching`)."""
        return self.branches[states]
