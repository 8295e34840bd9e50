"""Draft-tree selection, tree masks / position ids and ragged KV moves on hand-worked examples."""

from __future__ import annotations

import torch

from specforge.inference.kv import keep_new_slots, step_mask
from specforge.inference.sampling import verify_tree
from specforge.inference.tree import ancestor_mask, select_tree, tree_position_ids


def _hand_tree():
    # Candidates (index: token, parent candidate, depth, cumulative log-prob):
    #   0: a=11 root child -0.1     1: b=12 root child -0.5
    #   2: c=13 child of a -0.3     3: d=14 child of a -0.9     4: e=15 child of b -0.6
    tok = torch.tensor([[11, 12, 13, 14, 15]])
    par = torch.tensor([[-1, -1, 0, 0, 1]])
    dep = torch.tensor([[1, 1, 2, 2, 2]])
    sc = torch.tensor([[-0.1, -0.5, -0.3, -0.9, -0.6]])
    return select_tree(tok, par, dep, sc, torch.tensor([10]), num_nodes=4)


def test_select_tree_keeps_best_nodes_parents_first():
    tree = _hand_tree()
    # Kept: a, c, b, e (d has the lowest score); ordered by depth then candidate index: a, b, c, e.
    assert tree.tokens.tolist() == [[10, 11, 12, 13, 15]]
    assert tree.parents.tolist() == [[-1, 0, 0, 1, 2]]
    assert tree.depths.tolist() == [[0, 1, 1, 2, 2]]
    assert tree.children() == [[[1, 2], [3], [4], [], []]]


def test_ancestor_mask_and_positions_hand_worked():
    tree = _hand_tree()
    expected = torch.tensor([
        # r  a  b  c  e
        [1, 0, 0, 0, 0],  # r
        [1, 1, 0, 0, 0],  # a
        [1, 0, 1, 0, 0],  # b
        [1, 1, 0, 1, 0],  # c (a's child)
        [1, 0, 1, 0, 1],  # e (b's child)
    ], dtype=torch.bool)
    assert torch.equal(ancestor_mask(tree.parents)[0], expected)
    assert tree_position_ids(tree.depths, torch.tensor([10])).tolist() == [[10, 11, 11, 12, 12]]


def test_step_mask_hides_stale_slots():
    new = torch.ones(2, 1, 1, dtype=torch.bool)
    m = step_mask(torch.tensor([2, 3]), 3, new)
    assert m.tolist() == [[[True, True, False, True]], [[True, True, True, True]]]


def test_select_tree_tie_keeps_parent():
    # A child with the same score as its parent (log-prob 0) must not be kept without the parent.
    tok = torch.tensor([[5, 6]])
    tree = select_tree(tok, torch.tensor([[-1, 0]]), torch.tensor([[1, 2]]), torch.tensor([[-1.0, -1.0]]),
                       torch.tensor([4]), num_nodes=1)
    assert tree.tokens.tolist() == [[4, 5]]


def test_keep_new_slots_moves_accepted_path():
    # Row 0: 2 valid of 3 old slots, new slots [n0 n1 n2], keep n0, n2. Row 1: 3 valid, keep n0 only.
    old = torch.tensor([[1.0, 2.0, 99.0], [1.0, 2.0, 3.0]])
    new = torch.tensor([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    buf = torch.cat([old, new], 1)[:, None, :, None]  # [B, H=1, S+T, D=1]
    out = keep_new_slots(buf, torch.tensor([2, 3]), torch.tensor([[0, 2, 0], [0, 0, 0]]), torch.tensor([2, 1]))
    assert out.shape == (2, 1, 4, 1)
    assert out[0, 0, :4, 0].tolist() == [1.0, 2.0, 10.0, 12.0]
    assert out[1, 0, :4, 0].tolist() == [1.0, 2.0, 3.0, 20.0]


def test_verify_tree_greedy_follows_argmax():
    tree = _hand_tree()  # nodes r, a=11, b=12, c=13, e=15
    logits = torch.zeros(1, 5, 20)
    logits[0, 0, 12] = 5  # target after root: b
    logits[0, 2, 15] = 5  # after b: e
    logits[0, 4, 7] = 5  # after e: 7 (bonus)
    paths, bonus = verify_tree(tree, logits, temperature=0.0)
    assert paths == [[0, 2, 4]] and bonus == [7]
    logits[0, 0, 12], logits[0, 0, 3] = 0, 5  # target wants 3: nothing accepted, bonus 3
    paths, bonus = verify_tree(tree, logits, temperature=0.0)
    assert paths == [[0]] and bonus == [3]
