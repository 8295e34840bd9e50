"""Draft trees: EAGLE-2 candidate selection, tree attention masks and tree position ids.

A draft tree for a batch is stored flat: node 0 is the *root* (the last emitted token, whose target
key/value is not yet cached) and nodes ``1..M`` are draft tokens sorted by depth, so a parent always comes
before its children. Chains (topk 1) are the special case ``parents = [-1, 0, 1, 2, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: A drafter gives a child this log-prob (or lower) to say "no proposal here" (e.g. prompt lookup without a
#: match): the decoder neither expands nor verifies such nodes.
NO_PROPOSAL = -1e3


@dataclass
class DraftTree:
    """A batch of draft trees of identical shape.

    tokens  [B, N]  target token ids; column 0 is the root (last emitted token)
    parents [B, N]  index of the parent node in the same row (-1 for the root)
    depths  [B, N]  0 for the root, 1 for its children, ...
    scores  [B, N]  cumulative draft log-probability (0 for the root); children of one node are visited in
                    descending score order during verification
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    depths: torch.Tensor
    scores: torch.Tensor

    @property
    def size(self) -> int:
        """Number of nodes N including the root."""
        return self.tokens.shape[1]

    def children(self) -> list[list[list[int]]]:
        """Per row, per node: child node indices sorted by descending score (Python lists, for verification)."""
        parents = self.parents.tolist()
        scores = self.scores.tolist()
        out = []
        for par, sc in zip(parents, scores):
            kids: list[list[int]] = [[] for _ in par]
            for i, p in enumerate(par):
                if p >= 0:
                    kids[p].append(i)
            for k in kids:
                k.sort(key=lambda i: -sc[i])
            out.append(kids)
        return out


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """Tree attention among nodes: ``mask[b, i, j]`` is True iff node j is node i or one of its ancestors.

    parents [B, N] (topologically ordered, -1 for roots) -> bool [B, N, N].
    """
    b, n = parents.shape
    mask = torch.zeros(b, n, n, dtype=torch.bool, device=parents.device)
    rows = torch.arange(b, device=parents.device)
    for i in range(n):
        p = parents[:, i]
        has_parent = p >= 0
        # Inherit the parent's ancestor row (parents precede children, so that row is final already).
        inherited = mask[rows, p.clamp(min=0)] & has_parent[:, None]
        mask[:, i] = inherited
        mask[:, i, i] = True
    return mask


def tree_position_ids(depths: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Position ids of tree nodes: the root sits at ``base`` and a node of depth d at ``base + d``.

    depths [B, N], base [B] -> [B, N] int64.
    """
    return base[:, None].to(torch.long) + depths.to(torch.long)


def select_tree(
    cand_tokens: torch.Tensor, cand_parents: torch.Tensor, cand_depths: torch.Tensor,
    cand_scores: torch.Tensor, root_tokens: torch.Tensor, num_nodes: int,
) -> DraftTree:
    """Keep the ``num_nodes`` candidates with the highest cumulative score (EAGLE-2 re-ranking).

    cand_* [B, C]: every drafted candidate; ``cand_parents`` indexes into the candidate list (-1 = child of
    the root). root_tokens [B]. Returns a :class:`DraftTree` with N = 1 + min(num_nodes, C) nodes.
    A parent's cumulative score is >= its child's (log-probs are <= 0); ties are broken by depth, so the
    kept set is always closed under "parent of" and every kept node's path is in the tree.
    """
    b, c = cand_tokens.shape
    m = max(0, min(num_nodes, c))
    # Sort key: score descending, then depth ascending (parents before children on equal score).
    key = cand_scores.double() - cand_depths.double() * 1e-9
    keep = torch.topk(key, m, dim=1).indices if m else cand_tokens.new_zeros(b, 0)
    # Re-order the kept nodes by (depth, candidate index) so parents come first.
    order_key = cand_depths.gather(1, keep) * (c + 1) + keep
    keep = keep.gather(1, order_key.argsort(dim=1))
    # Map candidate index -> new node index (1..m); the root is node 0.
    new_index = torch.full((b, c), -1, dtype=torch.long, device=cand_tokens.device)
    new_index.scatter_(1, keep, torch.arange(1, m + 1, device=cand_tokens.device).expand(b, m))
    par_cand = cand_parents.gather(1, keep)
    par_new = torch.where(par_cand < 0, torch.zeros_like(par_cand),
                          new_index.gather(1, par_cand.clamp(min=0)))
    if (par_new < 0).any():  # cannot happen given the tie-break above; guard against misuse
        raise RuntimeError("select_tree: a kept node's parent was dropped")
    zeros = torch.zeros(b, 1, dtype=torch.long, device=cand_tokens.device)
    return DraftTree(
        tokens=torch.cat([root_tokens[:, None].long(), cand_tokens.gather(1, keep)], 1),
        parents=torch.cat([zeros - 1, par_new], 1),
        depths=torch.cat([zeros, cand_depths.gather(1, keep)], 1),
        scores=torch.cat([zeros.to(cand_scores.dtype), cand_scores.gather(1, keep)], 1),
    )
