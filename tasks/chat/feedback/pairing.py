"""Judgements into preference pairs, and the statistics per model version.

The rules:
- a compare-mode pick "left" or "right" is one pair: the picked reply chosen, the other rejected;
  a "tie" says neither is better and is dropped (counted);
- a thumbs-down reply and a thumbs-up reply to the same prompt make a pair (every such
  combination, whoever gave them);
- a lone rating (no opposite rating on the same prompt) is kept in the database, never paired;
- the same (prompt, chosen, rejected) twice is one pair (counted as a duplicate removed).

The split holds out whole prompts: all pairs of a prompt are on the same side, and the side
depends only on the prompt (its hash), so a prompt stays on its side as judgements accumulate.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tasks.chat.feedback.records import Judgement


@dataclass
class Pair:
    prompt: list[dict]
    chosen: str
    rejected: str
    chosen_version: str
    rejected_version: str
    source: str  # "pick" or "ratings"

    def row(self) -> dict:
        """The row as dpo-finetune reads it (the prompt/chosen/rejected format of tasks/training/preferences.py)."""
        return {
            "prompt": self.prompt,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
            "chosen_version": self.chosen_version,
            "rejected_version": self.rejected_version,
            "source": self.source,
        }

    def identity(self) -> str:
        return json.dumps([self.prompt, self.chosen, self.rejected], sort_keys=True)


@dataclass
class Pairing:
    pairs: list[Pair]
    judgements: int
    ties_dropped: int = 0
    duplicates_removed: int = 0
    lone_ratings: int = 0
    pairs_per_version: dict[str, int] = field(default_factory=dict)  # pairs whose chosen side each version wrote


def prompt_key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def make_pairs(judgements: Iterable[Judgement]) -> Pairing:
    judgements = list(judgements)
    pairs: list[Pair] = []
    ties = 0
    ratings: dict[str, dict[str, list[Judgement]]] = defaultdict(lambda: {"up": [], "down": []})
    for j in judgements:
        if j.verdict == "tie":
            ties += 1
        elif j.kind == "pick":
            left = (j.reply_a, j.version_a)
            right = (j.reply_b or "", j.version_b or j.model_b or "")
            (chosen, chosen_v), (rejected, rejected_v) = (left, right) if j.verdict == "left" else (right, left)
            if chosen.strip() != rejected.strip():  # two identical replies teach nothing
                pairs.append(Pair(j.prompt, chosen, rejected, chosen_v, rejected_v, "pick"))
        else:
            ratings[prompt_key(j.prompt)][j.verdict].append(j)
    lone = 0
    for rated in ratings.values():
        if not rated["up"] or not rated["down"]:
            lone += len(rated["up"]) + len(rated["down"])
            continue
        for good in rated["up"]:
            for bad in rated["down"]:
                if good.reply_a.strip() != bad.reply_a.strip():
                    pairs.append(Pair(good.prompt, good.reply_a, bad.reply_a, good.version_a, bad.version_a, "ratings"))
    unique: dict[str, Pair] = {}
    for pair in pairs:
        unique.setdefault(pair.identity(), pair)
    kept = list(unique.values())
    return Pairing(
        pairs=kept,
        judgements=len(judgements),
        ties_dropped=ties,
        duplicates_removed=len(pairs) - len(kept),
        lone_ratings=lone,
        pairs_per_version=dict(Counter(p.chosen_version for p in kept)),
    )


def _prompt_hash(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split_pairs(pairs: list[Pair], eval_fraction: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, eval): whole prompts held out, about `eval_fraction` of the prompts, at least one when
    there are two prompts or more; the prompts with the smallest hashes are held out."""
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[prompt_key(pair.prompt)].append(pair)
    ordered = sorted(groups, key=lambda k: _prompt_hash(k, seed))
    held = round(len(ordered) * eval_fraction)
    held = min(max(held, 1 if len(ordered) >= 2 else 0), max(len(ordered) - 1, 0))
    eval_keys = set(ordered[:held])
    train = [p for k in ordered[held:] for p in groups[k]]
    held_out = [p for k in ordered if k in eval_keys for p in groups[k]]
    return train, held_out


@dataclass
class VersionStats:
    judgements: int = 0  # ratings of its replies and compare picks it took part in
    up: int = 0
    down: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0

    @property
    def win_rate(self) -> float | None:
        """Compare-mode wins over decided picks (ties left out); None before any pick."""
        decided = self.wins + self.losses
        return round(self.wins / decided, 3) if decided else None

    def as_dict(self) -> dict:
        return {
            "judgements": self.judgements,
            "up": self.up,
            "down": self.down,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "win_rate": self.win_rate,
        }


def version_stats(judgements: Iterable[Judgement]) -> dict[str, VersionStats]:
    """Per model version: how many judgements it received, its thumbs, and its compare-mode record."""
    stats: dict[str, VersionStats] = defaultdict(VersionStats)
    for j in judgements:
        a = stats[j.version_a]
        a.judgements += 1
        if j.kind == "rating":
            a.up += j.verdict == "up"
            a.down += j.verdict == "down"
            continue
        b = stats[j.version_b or j.model_b or "?"]
        b.judgements += 1
        if j.verdict == "tie":
            a.ties += 1
            b.ties += 1
        else:
            winner, loser = (a, b) if j.verdict == "left" else (b, a)
            winner.wins += 1
            loser.losses += 1
    return dict(stats)
