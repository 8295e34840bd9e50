"""Old home of the TTT unroll and loss; they live in :mod:`specforge.eagle3.ttt`."""

from specforge.eagle3.ttt import (
    Eagle3TTT,
    TeacherTargets,
    teacher_from_hidden,
    teacher_from_logits,
)

__all__ = ["Eagle3TTT", "TeacherTargets", "teacher_from_hidden", "teacher_from_logits"]
