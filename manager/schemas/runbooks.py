"""Models of runbooks, their runs and governance standards (``/api/v1/runbooks``,
``/api/v1/runbook-runs``, ``/api/v1/standards``), shared by the server and the client.

A runbook's YAML file is this :class:`RunbookDefinition` written as YAML: the client parses
the file and sends the same document as JSON, and exports it back the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "INPUT_TYPES",
    "ApprovalDecision",
    "InputDef",
    "RunList",
    "RunStart",
    "RunView",
    "RunbookDefinition",
    "RunbookList",
    "RunbookView",
    "ScoreView",
    "StandardDefinition",
    "StandardList",
    "StandardRule",
    "StandardView",
    "StepDef",
    "StepView",
]

Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", min_length=1, max_length=64)]
RunbookName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", min_length=1, max_length=128)]
Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=64)]
InputType = Literal["string", "number", "boolean", "enum", "secret"]
INPUT_TYPES: tuple[str, ...] = ("string", "number", "boolean", "enum", "secret")
Scalar = str | int | float | bool


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class InputDef(Model):
    name: Identifier
    type: InputType = "string"
    description: str = Field(default="", max_length=1024)
    required: bool = True
    default: Scalar | None = None
    # The allowed values of an enum.
    values: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=256
    )
    max_length: int = Field(default=1024, ge=1, le=65536)

    @model_validator(mode="after")
    def _enum_values(self) -> InputDef:
        if self.type == "enum" and not self.values:
            raise ValueError(f"input {self.name}: an enum lists its values")
        if self.type != "enum" and self.values:
            raise ValueError(f"input {self.name}: only an enum lists values")
        if self.type == "secret" and self.default is not None:
            raise ValueError(f"input {self.name}: a secret input takes no default")
        return self


class StepDef(Model):
    """One step. ``kind`` picks which fields apply (manager.runbooks.kinds checks them)."""

    name: Identifier
    kind: Annotated[str, Field(min_length=1, max_length=32)]
    description: str = Field(default="", max_length=1024)
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    # An expression over inputs and earlier steps: false skips the step.
    when: str | None = Field(default=None, max_length=1024)
    selectors: list[Annotated[str, Field(max_length=128)]] = Field(
        default_factory=list, max_length=64
    )
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    # shell: the script is sent as written (never templated); inputs reach it as
    # INPUT_<NAME> environment variables, and ``env`` values are templates.
    script: str | None = Field(default=None, max_length=256 * 1024)
    interpreter: Literal["bash", "sh"] = "bash"
    env: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)],
        Annotated[str, Field(max_length=8192)],
    ] = Field(default_factory=dict, max_length=64)
    # http: each field a template.
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str | None = Field(default=None, max_length=8192)
    headers: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=8192)]] = (
        Field(default_factory=dict, max_length=64)
    )
    body: str | None = Field(default=None, max_length=256 * 1024)
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, max_length=32
    )
    # approval: one member of each named group approves.
    groups: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=16
    )
    # verify (issue 20): its specification, kept as given.
    spec: dict[str, Any] | None = None


class RunbookDefinition(Model):
    name: RunbookName
    description: str = Field(default="", max_length=4096)
    app: str = Field(min_length=1, max_length=128)
    # The environment; None: the run's ``env`` input names it.
    env: str | None = Field(default=None, min_length=1, max_length=128)
    tags: list[Tag] = Field(default_factory=list, max_length=64)
    inputs: list[InputDef] = Field(default_factory=list, max_length=64)
    steps: list[StepDef] = Field(min_length=1, max_length=64)
    # Runs when a step's task fails; then the run ends failed.
    rollback: StepDef | None = None
    # Whoever started a run may approve its approval steps too.
    allow_self_approval: bool = False

    @model_validator(mode="after")
    def _names(self) -> RunbookDefinition:
        seen: set[str] = set()
        for step in [*self.steps, *([self.rollback] if self.rollback else [])]:
            if step.name in seen:
                raise ValueError(f"two steps are named {step.name!r}")
            seen.add(step.name)
        inputs = [i.name for i in self.inputs]
        if len(set(inputs)) != len(inputs):
            raise ValueError("two inputs have the same name")
        if self.env is None:
            env_input = next((i for i in self.inputs if i.name == "env"), None)
            if env_input is None or env_input.type not in ("string", "enum"):
                raise ValueError("without env, the runbook needs a string or enum input 'env'")
        return self


class ScoreView(Model):
    standard: str
    score: float
    met: list[str]
    unmet: list[str]
    # Enforced for this environment type, and the minimum score there.
    enforced: bool = False
    minimum: float | None = None


class RunbookView(Model):
    name: str
    version: int
    definition: RunbookDefinition
    updated_at: float
    scores: list[ScoreView] = Field(default_factory=list)


class RunbookList(Model):
    runbooks: list[RunbookView]


class RunStart(Model):
    inputs: dict[Annotated[str, Field(max_length=64)], Scalar] = Field(
        default_factory=dict, max_length=64
    )
    # A key the caller chooses so that a retried start returns the same run.
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    # Proceed through an active freeze window (needs override_freeze): why, for the audit.
    override_freeze: str | None = Field(default=None, min_length=1, max_length=2048)


class ApprovalDecision(Model):
    reason: str = Field(default="", max_length=2048)
    # The approval step; None: the one the run waits on.
    step: str | None = Field(default=None, max_length=64)


class StepView(Model):
    name: str
    kind: str
    status: str
    task_id: str | None = None
    deadline: float | None = None
    approvals: list[dict[str, str]] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    reason: str | None = None
    # Output names only: values are read with the task (its outputs are masked there).
    outputs: list[str] = Field(default_factory=list)


class RunView(Model):
    id: str
    runbook: str
    version: int
    state: Literal["queued", "running", "waiting_for_approval", "succeeded", "failed", "cancelled"]
    app: str
    env: str
    trigger: str
    incident_id: str | None = None
    started_by: str
    created_at: float
    updated_at: float
    reason: str | None = None
    steps: list[StepView]
    rollback: StepView | None = None
    # Input names: the values are sealed at rest and never answered.
    inputs: list[str] = Field(default_factory=list)
    scores: list[ScoreView] = Field(default_factory=list)


class RunList(Model):
    runs: list[RunView]


RuleKind = Literal["has_tag", "has_step_tagged", "has_step_kind", "has_rollback"]


class StandardRule(Model):
    rule: RuleKind
    value: str = Field(default="", max_length=64)
    weight: float = Field(gt=0, le=1000)
    description: str = Field(default="", max_length=256)


class StandardDefinition(Model):
    name: RunbookName
    description: str = Field(default="", max_length=2048)
    rules: list[StandardRule] = Field(min_length=1, max_length=64)
    # Refuse runs below ``minimum`` % in environments of these types.
    enforce_env_types: list[Literal["production", "non_production"]] = Field(default_factory=list)
    minimum: float = Field(default=0, ge=0, le=100)


class StandardView(Model):
    name: str
    version: int
    definition: StandardDefinition
    updated_at: float


class StandardList(Model):
    standards: list[StandardView]
