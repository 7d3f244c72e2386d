"""What every PEFT method's config shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedtune.config import PeftSettings


def common(settings: PeftSettings) -> dict[str, Any]:
    """A sequence classifier (peft then also trains the classification head, as
    `modules_to_save`) adapted on `settings.target_modules` (None: peft's default)."""
    import peft

    return {"task_type": peft.TaskType.SEQ_CLS, "target_modules": settings.target_modules}
