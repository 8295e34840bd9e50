"""Training-time-test unroll and loss for EAGLE-3."""

from .eagle3 import Eagle3TTT, TeacherTargets, teacher_from_hidden, teacher_from_logits

__all__ = ["Eagle3TTT", "TeacherTargets", "teacher_from_hidden", "teacher_from_logits"]
