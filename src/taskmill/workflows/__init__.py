"""Workflows: pipelines (each step's result feeds the next), groups (fan-out with a completion
callback fired once, from an idempotent set in the result store) and per-message callbacks."""

from taskmill.workflows.group import Group, group
from taskmill.workflows.pipeline import Pipeline, pipeline

__all__ = ["Group", "Pipeline", "group", "pipeline"]
