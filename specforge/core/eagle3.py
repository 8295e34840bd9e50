"""Old path of the TTT unroll, loss and metrics; they live in :mod:`specforge.eagle3.ttt`."""

from specforge.eagle3.ttt import (
    Eagle3TTT,
    TeacherTargets,
    teacher_from_hidden,
    teacher_from_logits,
    teacher_positions,
    ttt_input_ids,
    ttt_valid_mask,
)

__all__ = ["Eagle3TTT", "TeacherTargets", "teacher_from_hidden", "teacher_from_logits", "teacher_positions",
           "ttt_input_ids", "ttt_valid_mask"]
