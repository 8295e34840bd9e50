"""The EAGLE-3 training-time-test (TTT) unroll, loss and metrics (docs/EAGLE3.md section 2), in one file.

Alignment (the reference EAGLE-3 trainers'): the target state at position ``t`` has seen tokens ``<= t``.
At TTT step ``i`` the draft at index ``t`` reads the token ``input_ids[t+i+1]``, position ``t+i``, and
is trained towards the teacher at position ``t+i+1`` (the target's distribution for token ``t+i+2``).
Step 0's hidden is ``fc(aux)``; step i>0's is step i-1's pre-norm output. Index ``t`` counts at step i
iff ``loss_mask[t+i] == 1``, ``attention_mask[t] == attention_mask[t+i+1] == 1`` (a real query and a
real teacher position, so ``t+i+1 < L``) and the teacher's full-vocab argmax is in the draft vocab.

Loss: ``sum_i 0.8**i * loss_i`` where ``loss_i`` is the soft cross-entropy against the teacher softmax
restricted and renormalised to the draft vocab, **averaged over the valid indices of step i** (pooled
over the batch; 0 when none). The reference divides by all ``B*L`` positions instead; averaging over
valid ones keeps the scale independent of padding and prompt length.

Speed/memory: logits are computed only at valid indices, and the draft head (norm + lm_head) is fused
with the soft cross-entropy in row chunks that compute the gradients during the forward pass - no
``[N,Vd]`` tensor outlives its chunk (see :class:`_FusedHeadSoftCE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specforge.eagle3.attention import get_attention_backend
from specforge.eagle3.base import Eagle3DraftModel
from specforge.errors import SpecforgeError

# rows per chunk = this / Vd: 16 MB fp32 per [rows,Vd] buffer. Below glibc's 32 MB mmap ceiling, so
# freed buffers are reused from the heap instead of being page-faulted in again for every chunk.
_CHUNK_ELEMS = 1 << 22


@dataclass
class TeacherTargets:
    """The teacher at every position ``p`` (its distribution for token ``p+1``).

    ``probs [B,L,Vd]`` fp32: target softmax restricted to the draft vocab and renormalised;
    ``mass [B,L]``: the full softmax's mass on the draft vocab (probs * mass = the unrenormalised part);
    ``target_ids [B,L]`` int64: argmax over the full target vocab; ``in_draft [B,L]`` bool: that argmax is
    in the draft vocab.
    """

    probs: torch.Tensor
    mass: torch.Tensor
    target_ids: torch.Tensor
    in_draft: torch.Tensor


@torch.no_grad()
def teacher_from_logits(logits: torch.Tensor, t2d: torch.Tensor, chunk: int = 256) -> TeacherTargets:
    """Build :class:`TeacherTargets` from full target logits ``[B,L,V]`` and ``t2d [V]`` bool (row chunks)."""
    B, L, V = logits.shape
    # _teacher works in place on its rows: copies, never views of the caller's logits
    return _teacher(lambda s: logits.reshape(B * L, V)[s].to(torch.float32, copy=True), B, L, t2d, chunk,
                    logits.device)


def teacher_positions(loss_mask: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Bool ``[B,L]``: the positions whose teacher some TTT step can read - ``p`` with ``loss_mask[p-1]`` and
    ``p`` real (index ``t`` of step ``i`` reads ``loss_mask[t+i]`` and the teacher at ``t+i+1``)."""
    need = torch.zeros(loss_mask.shape, dtype=torch.bool, device=loss_mask.device)
    need[:, 1:] = loss_mask[:, :-1].bool()
    if attention_mask is not None:
        need &= attention_mask.to(need.device).bool()
    return need


@torch.no_grad()
def teacher_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, t2d: torch.Tensor,
                        chunk: int = 256, positions: torch.Tensor | None = None) -> TeacherTargets:
    """Build :class:`TeacherTargets` from the target's final normed hidden ``[B,L,Ht]`` and its
    ``lm_head_weight [V,Ht]`` without ever holding ``[B,L,V]`` logits.

    ``positions [B,L]`` bool (e.g. :func:`teacher_positions`): compute only there - the full-vocab GEMM is
    skipped elsewhere, where probs/mass are 0 and ``in_draft`` is False (no TTT step reads them)."""
    B, L, Ht = hidden.shape
    flat = hidden.reshape(B * L, Ht)
    sel = None if positions is None else positions.reshape(B * L).to(hidden.device).nonzero().flatten()
    return _teacher(lambda s: flat[s] @ lm_head_weight.T, B, L, t2d, chunk, hidden.device, sel)


def _teacher(rows, B, L, t2d, chunk, device, sel=None) -> TeacherTargets:
    t2d = t2d.to(device)
    Vd = int(t2d.sum())
    alloc = torch.empty if sel is None else torch.zeros
    probs = alloc(B * L, Vd, dtype=torch.float32, device=device)
    mass = alloc(B * L, dtype=torch.float32, device=device)
    ids = alloc(B * L, dtype=torch.long, device=device)
    n = B * L if sel is None else sel.numel()
    d_idx = t2d.nonzero().flatten()  # draft vocab columns, ascending (= z[:, t2d])
    for s in range(0, n, chunk):
        idx = slice(s, s + chunk) if sel is None else sel[s:s + chunk]
        z = rows(idx).float()  # [c,V], a fresh tensor: worked on in place
        zd = z.index_select(1, d_idx)  # [c,Vd]
        zmax, zarg = z.max(-1, keepdim=True)  # max and argmax in one pass
        ids[idx] = zarg.view(-1)
        lse = z.sub_(zmax).exp_().sum(-1, keepdim=True).log_().add_(zmax)
        dmax = zd.amax(-1, keepdim=True)
        dsum = zd.sub_(dmax).exp_().sum(-1, keepdim=True)
        probs[idx] = zd.div_(dsum)
        mass[idx] = (dsum.log() + dmax - lse).exp_().squeeze(-1)
    in_draft = t2d[ids]
    if sel is not None:
        in_draft &= torch.zeros_like(in_draft).index_fill_(0, sel, True)
    return TeacherTargets(probs.view(B, L, Vd), mass.view(B, L), ids.view(B, L), in_draft.view(B, L))


class _FusedHeadSoftCE(torch.autograd.Function):
    """``sum_n w_n * CE(teacher_n, softmax(x_n @ W.T))`` with gradients computed chunk by chunk in forward.

    Inputs: ``x [N,H]``, ``W [Vd,H]``, ``teacher [R,Vd]`` with ``rows [N]`` selecting each x row's teacher
    row, ``mass [N]``, ``w [N]``. Saves only ``grad_x [N,H]`` and ``grad_W [Vd,H]`` for backward.
    Also returns (no grad) per-row CE ``[N]``, draft argmax ``[N]`` and expected acceptance
    ``sum_v min(p_teacher, p_draft)`` ``[N]``.
    """

    @staticmethod
    def forward(ctx, x, W, teacher, rows, mass, w):
        N, Vd = x.shape[0], W.shape[0]
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_W = torch.zeros_like(W) if ctx.needs_input_grad[1] else None
        ce, arg, acc = (torch.empty(N, dtype=torch.float32, device=x.device) for _ in range(3))
        arg = arg.long()
        # Under autocast the three GEMMs (logits, grad_x, grad_W) run in the autocast dtype - they are ~2/3
        # of a step's FLOPs - with fp32 softmax/CE and fp32 gradient accumulation. Out-variant and in-place
        # ops are not autocast, so the casts are explicit (the weight once per call, not per chunk).
        dev = x.device.type
        lowp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        lowp = lowp if lowp not in (None, torch.float32) else (x.dtype if x.dtype != torch.float32 else None)
        Wc = W.to(lowp) if lowp is not None else W
        xl = x.to(lowp) if lowp is not None else x
        step = max(1, (_CHUNK_ELEMS if lowp is None else 2 * _CHUNK_ELEMS) // max(Vd, 1))
        c = min(step, N)
        pbuf = torch.empty(c, Vd, dtype=teacher.dtype, device=x.device)
        zbuf = torch.empty(c, Vd, dtype=torch.float32, device=x.device)
        qbuf = torch.empty(c, Vd, dtype=torch.float32, device=x.device)
        for s in range(0, N, step):
            xc = xl[s:s + step]
            r = rows[s:s + step]
            n = r.numel()
            p = torch.index_select(teacher, 0, r, out=pbuf[:n])  # [c,Vd], reused buffer
            if lowp is None:
                z = torch.mm(xc, Wc.T, out=zbuf[:n])
            else:
                z = zbuf[:n].copy_(torch.mm(xc, Wc.T))
            # softmax in few passes over [c,Vd] (these elementwise passes cost about as much as the GEMMs):
            # max and argmax in one pass, shift in place, exp into a reused buffer, normalise in place
            zmax, zarg = z.max(-1, keepdim=True)
            arg[s:s + step] = zarg.view(-1)
            z.sub_(zmax)
            q = torch.exp(z, out=qbuf[:n])
            zsum = q.sum(-1, keepdim=True)
            # CE = -sum_v p_v (z_v - log zsum) = log zsum - p.z (teacher rows sum to 1); row dots through bmm,
            # kept in fp32 (autocast would run bmm in bf16: a loss off by ~1e-2)
            with torch.autocast(dev, enabled=False):
                pz = torch.bmm(p[:, None, :], z[:, :, None]).view(-1)
            ce[s:s + step] = zsum.log().view(-1) - pz
            q.div_(zsum)  # draft probabilities
            pm = torch.mul(p, mass[s:s + step, None], out=z)  # z is spent: its buffer holds p * mass
            acc[s:s + step] = torch.minimum(pm, q, out=pm).sum(-1)
            if need:
                g = q.sub_(p).mul_(w[s:s + step, None]).to(xc.dtype)  # d loss / d logits (p sums to 1)
                if grad_x is not None:
                    grad_x[s:s + step] = g @ Wc
                if grad_W is not None:
                    if lowp is None:
                        grad_W.addmm_(g.T, xc)
                    else:  # the chunk's partial in low precision, summed in fp32
                        grad_W += torch.mm(g.T, xc)
        ctx.save_for_backward(grad_x, grad_W)
        ctx.mark_non_differentiable(ce, arg, acc)
        return (ce * w).sum(), ce, arg, acc

    @staticmethod
    def backward(ctx, g_loss, *_):
        grad_x, grad_W = ctx.saved_tensors
        return (None if grad_x is None else grad_x * g_loss, None if grad_W is None else grad_W * g_loss,
                None, None, None, None)


def _head_soft_ce(draft: Eagle3DraftModel, h: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor,
                  mass: torch.Tensor, w: torch.Tensor):
    """Weighted soft CE of the draft head on pre-norm rows ``h [N,H]``; see :class:`_FusedHeadSoftCE`."""
    parts = draft.logits_parts(h)
    if parts is not None:
        return _FusedHeadSoftCE.apply(parts[0], parts[1], teacher, rows, mass, w)
    logp = torch.log_softmax(draft.compute_logits(h).float(), -1)  # custom drafts: plain autograd
    p = teacher.index_select(0, rows)
    ce = -(p * logp).sum(-1)
    with torch.no_grad():
        acc = torch.minimum(logp.exp(), p * mass[:, None]).sum(-1)
    return (ce * w).sum(), ce.detach(), logp.detach().argmax(-1), acc


def accept_length(acc: list[float]) -> float:
    """Simulated chain acceptance length ``1 + sum_k prod_{j<=k} acc_j`` (bonus token included) from pooled
    per-step accuracies; what train and eval records report as ``accept_len`` / ``sim_tau``."""
    total, run = 1.0, 1.0
    for a in acc:
        run *= float(a)
        total += run
    return total


def ttt_input_ids(input_ids: torch.Tensor, step: int) -> torch.Tensor:
    """Step ``i``'s input ids ``[B,L]``: ``input_ids[t+i+1]`` (past the end: the last id, never valid)."""
    L = input_ids.shape[1]
    src = torch.arange(step + 1, step + 1 + L, device=input_ids.device).clamp_(max=L - 1)
    return input_ids[:, src]


def ttt_valid_mask(step: int, loss_mask: torch.Tensor, attention_mask: torch.Tensor,
                   in_draft: torch.Tensor) -> torch.Tensor:
    """Bool ``[B,L]``: indices ``t`` trained at step ``i`` (see the module docstring). Inputs are ``[B,L]``."""
    B, L = loss_mask.shape
    am = attention_mask.bool()
    valid = torch.zeros(B, L, dtype=torch.bool, device=loss_mask.device)
    n = L - step - 1  # indices t with t+i+1 < L
    if n > 0:
        valid[:, :n] = (loss_mask[:, step:step + n].bool() & am[:, step:step + n] & am[:, :n]
                        & am[:, step + 1:] & in_draft[:, step + 1:].bool())
    return valid


class Eagle3TTT(nn.Module):
    """The TTT unroll over a draft: ``forward(...) -> (loss, metrics)``; see the module docstring."""

    def __init__(self, draft: Eagle3DraftModel, ttt_length: int = 7, attention_backend: str | None = None,
                 step_weight: float = 0.8):
        super().__init__()
        if ttt_length < 1:
            raise SpecforgeError(f"--ttt-length must be at least 1, got {ttt_length}.")
        self.draft = draft
        self.ttt_length = ttt_length
        self.step_weight = step_weight
        self.backend = get_attention_backend(attention_backend)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, loss_mask: torch.Tensor,
                aux_hidden: torch.Tensor, teacher: TeacherTargets | torch.Tensor,
                position_ids: torch.Tensor | None = None):
        """Run the unroll.

        Args: ``input_ids [B,L]``, ``attention_mask [B,L]`` (1 = real, None = all real), ``loss_mask [B,L]``,
        ``aux_hidden [B,L,3*Ht]``, ``teacher`` a :class:`TeacherTargets` or full logits ``[B,L,V]``,
        ``position_ids [B,L]`` (default ``arange(L)``, as the target used).
        Returns ``(loss, metrics)``: scalar loss with grad; metrics of detached tensors: ``loss``,
        ``step_loss [K]``, ``step_acc [K]`` (accuracy over ``step_scored [K]`` positions: the trained ones
        plus those whose teacher argmax is outside the draft vocab, which count as misses), ``step_correct [K]``,
        ``step_valid [K]`` (trained positions), ``step_expected_accept [K]`` (mean of sum min(p_teacher, p_draft)
        over trained positions),
        ``accepted_drafts`` (sum_k prod_{j<=k} step_acc_j) and ``accept_length`` (1 + that, like tau).
        """
        draft = self.draft
        B, L = input_ids.shape
        dev = input_ids.device
        if not isinstance(teacher, TeacherTargets):
            teacher = teacher_from_logits(teacher, draft.t2d)
        am = (torch.ones(B, L, dtype=torch.bool, device=dev) if attention_mask is None
              else attention_mask.to(dev).bool())
        lm = loss_mask.to(dev).bool()
        pos = torch.arange(L, device=dev)[None].expand(B, L) if position_ids is None else position_ids
        tprobs = teacher.probs.reshape(B * L, -1)
        tmass = teacher.mass.reshape(B * L)
        tids = teacher.target_ids.reshape(B * L)
        tin = teacher.in_draft.reshape(B, L).to(dev)
        # the target may run in another dtype (e.g. bf16 target, fp32 draft)
        dtype = next(p for p in draft.parameters() if p.requires_grad).dtype
        hidden = draft.project_hidden_states(aux_hidden.to(dtype))
        cache: list = []
        xs, rows_all, ws, steps, scored = [], [], [], [], []
        every = torch.ones_like(tin)
        for i in range(self.ttt_length):
            # step i reads token t+i+1 at position t+i
            ids = ttt_input_ids(input_ids, i)
            hidden = draft.ttt_step(draft.embed_input_ids(ids).to(dtype), hidden, pos + i, cache,
                                    attention_mask, self.backend)
            b, t = ttt_valid_mask(i, lm, am, tin).nonzero(as_tuple=True)
            xs.append(hidden[b, t])
            rows_all.append(b * L + t + i + 1)  # flat teacher row of position t+i+1
            cnt = b.numel()
            ws.append(torch.full((cnt,), (self.step_weight ** i) / max(cnt, 1), device=dev))
            steps.append(cnt)
            # accuracy also scores positions whose teacher argmax is outside the draft vocab: certain misses
            # at decode time, so the simulated acceptance length predicts the decoded τ (the loss skips them)
            scored.append(ttt_valid_mask(i, lm, am, every).sum())
        h = torch.cat(xs)
        rows = torch.cat(rows_all)
        loss, ce, arg, acc = _head_soft_ce(draft, h, tprobs, rows, tmass.index_select(0, rows), torch.cat(ws))
        with torch.no_grad():
            correct = (arg + draft.d2t[arg]) == tids.index_select(0, rows)
            metrics = self._metrics(loss, ce, correct, acc, steps, torch.stack(scored).float())
        return loss, metrics

    @staticmethod
    def _metrics(loss, ce, correct, acc, steps, scored):
        K = len(steps)
        seg = torch.repeat_interleave(torch.arange(K, device=ce.device), torch.tensor(steps, device=ce.device))
        valid = torch.tensor(steps, dtype=torch.float32, device=ce.device)

        def per_step(v):
            return torch.zeros(K, device=ce.device).index_add_(0, seg, v.float())

        denom = valid.clamp(min=1)
        step_correct = per_step(correct)
        step_acc = step_correct / scored.clamp(min=1)
        accepted = torch.cumprod(step_acc, 0).sum()
        return {
            "loss": loss.detach(), "step_loss": per_step(ce) / denom, "step_acc": step_acc,
            "step_correct": step_correct, "step_valid": valid, "step_scored": scored,
            "step_expected_accept": per_step(acc) / denom,
            "accepted_drafts": accepted, "accept_length": 1.0 + accepted,
        }
