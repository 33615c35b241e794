"""Models of the verification routes (``/api/v1/verifications``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.verify.spec import VerifySpec

__all__ = ["VerificationList", "VerificationPut", "VerificationView", "VerifyRun"]


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class VerificationPut(Model):
    spec: VerifySpec


class VerificationView(Model):
    name: str
    version: int
    spec: VerifySpec
    created_at: float
    created_by: str | None = None


class VerificationList(Model):
    verifications: list[VerificationView]


class VerifyRun(Model):
    """Judge a finished deployment task: with a spec given here, or a named verification."""

    deployment: str = Field(min_length=1, max_length=128, description="the deployment task's id")
    spec: VerifySpec | None = None
    verification: str | None = Field(default=None, min_length=1, max_length=128)
    version: int | None = Field(default=None, ge=1)
    selectors: list[str] = Field(default_factory=list, max_length=64)
    timeout_s: float | None = Field(default=None, gt=0, le=8 * 24 * 3600)

    @model_validator(mode="after")
    def _one_spec(self) -> VerifyRun:
        if (self.spec is None) == (self.verification is None):
            raise ValueError("give a spec or the name of a verification, not both")
        if self.version is not None and self.verification is None:
            raise ValueError("version goes with verification")
        return self
