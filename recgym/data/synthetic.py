"""An offline synthetic dataset with real sequential structure, for the main command and fast tests.

Items belong to latent categories and clusters; their titles are readable ("Turbo Racing
Legends II") and their semantic IDs are derived from the same latents (level a = category,
level b = cluster, level c = index in the cluster), as an RQ-VAE over good item embeddings would
roughly give. Users have latent tastes (a few categories each). A sequence moves from item to item
by a fixed, sparse *transition* table (sequels, add-ons: mostly within a cluster) with probability
``p_transition``; otherwise it draws a new item from the user's taste with Zipf popularity. So a
sequence model (even a first-order transition model) beats popularity by a clear margin, and an LLM
has something to learn from the titles and SIDs alike.

Examples follow the D3 protocol: every interaction after a user's first is a request with up to
``max_history`` previous items; all requests are sorted by target time and cut 8:1:1.
"""

from __future__ import annotations

import numpy as np

from recgym.data.checks import check_max_history
from recgym.data.dataset import Catalogue, Dataset, Examples, sequence_windows, temporal_split

THEMES = (
    "Racing", "Puzzle", "Space", "Farm", "Dragon", "Soccer", "Zombie", "Pirate", "Castle", "Ninja",
    "Robot", "Ocean", "Jungle", "Wizard", "Knight", "Galaxy", "Dino", "Monster", "Tennis", "Rally",
    "Pixel", "Candy", "Safari", "Arctic", "Desert", "Circus", "Garden", "Samurai", "Viking", "Cyber",
)
ADJECTIVES = (
    "Turbo", "Super", "Mega", "Tiny", "Crimson", "Golden", "Silent", "Wild", "Lucky", "Brave",
    "Mystic", "Rapid", "Frozen", "Hidden", "Electric", "Cosmic", "Royal", "Shadow", "Happy", "Iron",
    "Silver", "Ancient", "Neon", "Little", "Grand", "Secret", "Epic", "Crazy", "Magic", "Final",
)
NOUNS = (
    "Legends", "Quest", "Adventure", "Heroes", "Party", "Tales", "Wars", "Academy", "Rush", "Saga",
    "Island", "Kingdom", "League", "Arena", "Builder", "Chronicles", "Empire", "Journey", "Mania",
    "Tycoon", "World", "Story", "Battle", "Escape", "Factory", "Club", "Odyssey", "Defense",
)
EDITIONS = ("", "", "", " II", " III", " Deluxe", " Collector's Edition", " HD", " Junior", " Online")


def make_synthetic(
    num_items: int = 3000,
    num_users: int = 3000,
    *,
    num_categories: int = 24,
    clusters_per_category: int = 8,
    min_length: int = 5,
    max_length: int = 20,
    p_transition: float = 0.7,
    successors: int = 3,
    tastes_per_user: int = 2,
    zipf: float = 1.1,
    max_history: int = 10,
    seed: int = 0,
) -> Dataset:
    """Generate the synthetic dataset (deterministic for a seed).

    Args:
        num_items, num_users: catalogue and user counts.
        num_categories: latent categories (at most 30; each gets a title theme and SID level a).
        clusters_per_category: clusters per category (SID level b).
        min_length, max_length: interactions per user, drawn uniformly.
        p_transition: chance that the next item follows the item-to-item transition table.
        successors: transition targets per item (3 = a sequel-like item plus two add-ons).
        tastes_per_user: categories a user draws fresh items from.
        zipf: popularity exponent within a category.
        max_history: history window of each example (an int >= 1, as for every reader).
        seed: the only source of randomness.

    Example:
        >>> ds = make_synthetic(num_items=300, num_users=200, seed=1)
        >>> ds.catalogue.num_items, ds.catalogue.sids.shape[1]
        (300, 3)
        >>> len(ds.train) > len(ds.test) > 0
        True
    """
    check_max_history(max_history)
    if not 1 <= num_categories <= len(THEMES):
        raise ValueError(f"num_categories must be in 1..{len(THEMES)}, got {num_categories}")
    if not 2 <= min_length <= max_length:
        raise ValueError(f"need 2 <= min_length <= max_length, got {min_length}, {max_length}")
    if num_items < num_categories * clusters_per_category:
        raise ValueError("num_items must be at least num_categories * clusters_per_category")
    rng = np.random.default_rng(seed)

    # Items: category, cluster, and a rank (popularity) inside the category.
    category = np.sort(rng.integers(0, num_categories, num_items))
    category[:num_categories] = np.arange(num_categories)  # every category non-empty
    category.sort()
    cluster = rng.integers(0, clusters_per_category, num_items)
    order = np.lexsort((np.arange(num_items), cluster, category))
    category, cluster = category[order], cluster[order]
    key = category * clusters_per_category + cluster
    first_of_key = np.searchsorted(key, key)
    code_c = np.arange(num_items) - first_of_key  # index inside (category, cluster)
    sids = np.stack([category, cluster, code_c], axis=1)
    titles = _titles(rng, category, num_items)

    # Popularity inside each category: Zipf over a random order of its items.
    weight = np.empty(num_items)
    for c in range(num_categories):  # one loop per category, not per item
        members = np.flatnonzero(category == c)
        ranks = rng.permutation(len(members)) + 1
        weight[members] = ranks ** -zipf
    cat_start = np.searchsorted(category, np.arange(num_categories + 1))
    # Per-category CDFs back to back, shifted by the category index so that the whole array
    # increases: one searchsorted of (u + c) then draws an item of category c for every row.
    cdf_keys = np.zeros(num_items)
    for c in range(num_categories):
        w = weight[cat_start[c]:cat_start[c + 1]]
        cdf_keys[cat_start[c]:cat_start[c + 1]] = c + np.cumsum(w) / w.sum()

    # Transitions: each item's successors lie mostly in its own cluster ("sequels", "add-ons").
    key_start = np.searchsorted(key, np.arange(num_categories * clusters_per_category + 1))
    lo, hi = key_start[key], key_start[key + 1]
    same_cluster = lo[:, None] + (rng.random((num_items, successors)) * (hi - lo)[:, None]).astype(np.int64)
    anywhere_in_cat = cat_start[category][:, None] + (
        rng.random((num_items, successors)) * np.diff(cat_start)[category][:, None]
    ).astype(np.int64)
    use_cluster = rng.random((num_items, successors)) < 0.7
    succ = np.where(use_cluster, same_cluster, anywhere_in_cat)
    succ_p = np.array([0.6, 0.25, 0.15][:successors] + [0.0] * max(0, successors - 3))
    succ_p = succ_p / succ_p.sum() if succ_p.sum() > 0 else np.full(successors, 1 / successors)

    # Users: tastes, lengths, and sequences generated step by step for all users at once.
    lengths = rng.integers(min_length, max_length + 1, num_users)
    tastes = rng.integers(0, num_categories, (num_users, tastes_per_user))
    steps = int(lengths.max())
    seqs = np.empty((num_users, steps), dtype=np.int64)
    seen = np.zeros((num_users, num_items), dtype=bool)
    rows = np.arange(num_users)
    for t in range(steps):  # one vectorized step over all users
        c = tastes[rows, rng.integers(0, tastes_per_user, num_users)]
        u = rng.random(num_users)
        a, b = cat_start[c], cat_start[c + 1]
        fresh = np.clip(np.searchsorted(cdf_keys, u + c), a, b - 1)
        if t == 0:
            nxt = fresh
        else:
            pick = (rng.random(num_users)[:, None] > np.cumsum(succ_p)).sum(axis=1)
            pick = np.minimum(pick, successors - 1)
            follow = succ[seqs[:, t - 1], pick]
            nxt = np.where(rng.random(num_users) < p_transition, follow, fresh)
        # Users rarely repeat items: a repeat becomes a fresh draw (a repeat of that is allowed).
        repeat = seen[rows, nxt]
        nxt = np.where(repeat, fresh, nxt)
        seqs[:, t] = nxt
        seen[rows, nxt] |= t < lengths

    # Timestamps: users start at random times over two years and act every few days.
    start = rng.integers(1_500_000_000, 1_500_000_000 + 2 * 365 * 86400, num_users)
    gaps = rng.integers(3600, 10 * 86400, (num_users, steps))
    times = start[:, None] + np.cumsum(gaps, axis=1)

    valid_step = np.arange(steps) < lengths[:, None]
    flat_items = seqs[valid_step]
    flat_times = times[valid_step]
    flat_users = np.repeat(rows, lengths)
    seq_start = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    positions = np.flatnonzero(np.arange(len(flat_items)) > seq_start)  # every interaction but the first
    history, history_len = sequence_windows(flat_items, seq_start[positions], positions, max_history)
    order = np.argsort(flat_times[positions], kind="stable")
    examples = Examples(
        user=flat_users[positions][order], history=history[order], history_len=history_len[order],
        target=flat_items[positions][order], timestamp=flat_times[positions][order],
    )
    train, valid, test = (examples.subset(s) for s in temporal_split(len(examples)))
    return Dataset(
        name="synthetic",
        catalogue=Catalogue(num_items, titles=titles, sids=sids),
        train=train, valid=valid, test=test,
        users=[f"user{u}" for u in range(num_users)],
        info={
            "format": "synthetic",
            "split": "D3 protocol: every interaction after the first, sorted by target time, 8:1:1",
            "params": {
                "num_items": num_items, "num_users": num_users, "num_categories": num_categories,
                "clusters_per_category": clusters_per_category, "min_length": min_length,
                "max_length": max_length, "p_transition": p_transition, "successors": successors,
                "tastes_per_user": tastes_per_user, "zipf": zipf, "seed": seed,
            },
        },
    )


def _titles(rng: np.random.Generator, category: np.ndarray, n: int) -> list[str]:
    adjective = rng.integers(0, len(ADJECTIVES), n)
    noun = rng.integers(0, len(NOUNS), n)
    edition = rng.integers(0, len(EDITIONS), n)
    return [
        f"{ADJECTIVES[a]} {THEMES[c]} {NOUNS[o]}{EDITIONS[e]}"
        for a, c, o, e in zip(adjective.tolist(), category.tolist(), noun.tolist(), edition.tolist())
    ]
