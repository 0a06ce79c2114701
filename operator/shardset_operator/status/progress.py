"""Work in progress, in words, for the Progressing condition (pure): the StatefulSet's
rollout and the journal's operation."""

from __future__ import annotations

from shardset_operator.api.models import Journal
from shardset_operator.api.observed import StatefulSetState


def rollout(sts: StatefulSetState | None) -> str | None:
    """The StatefulSet rollout in progress, in words; None when there is none."""
    if sts is None:
        return "waiting for the StatefulSet to be created"
    seen, wanted = sts.observed_generation, sts.generation
    if seen is not None and wanted is not None and seen < wanted:
        return "waiting for the StatefulSet controller to see the new pod template"
    if sts.update_revision and sts.current_revision != sts.update_revision:
        return f"rolling out a new pod template: {sts.updated}/{sts.replicas} pods updated"
    return None


def operation_text(journal: Journal | None, waiting: str | None) -> str | None:
    """The operation, its moves and the step it is at (or waits for)."""
    if journal is None:
        return None
    text = f"{journal.operation}: {journal.moves_done} moves done"
    if journal.moves_left:
        text += f", {journal.moves_left} left"
    return f"{text}; {waiting or journal.step}"
