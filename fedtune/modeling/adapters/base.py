"""What every PEFT method's config shares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedtune.config.base import Section

if TYPE_CHECKING:
    from fedtune.config import PeftSettings


class AdapterParams(Section):
    """What every PEFT method takes."""

    target_modules: tuple[str, ...] | None = None
    """Module names to adapt; default: peft's choice for the architecture (BERT: query,
    value; ia3: key, value, output.dense)."""


def common(settings: PeftSettings) -> dict[str, Any]:
    """A sequence classifier (peft then also trains the classification head, as
    `modules_to_save`) adapted on `settings.target_modules` (None: peft's default)."""
    import peft

    return {"task_type": peft.TaskType.SEQ_CLS, "target_modules": settings.target_modules}
