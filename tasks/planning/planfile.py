"""The plan file ``mme plan`` writes and ``mme deploy --plan`` reads (YAML): the instance type,
initial count, autoscaling (min, max, target invocations per instance per minute), the number of
endpoints (shards) and the ModelCacheSetting; the rest (cost, predicted figures, price date) is
kept for the reader and ignored by deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field

from infra.errors import UserError
from infra.versioned import VersionedDocument


class PlanFileError(UserError, ValueError):
    """A plan file that cannot be read: the message names the file and the field."""


class Autoscaling(BaseModel):
    min: int = Field(ge=1)
    max: int = Field(ge=1)
    target: float = Field(gt=0, description="SageMakerVariantInvocationsPerInstance (per minute)")


class PlanFile(VersionedDocument):
    kind: ClassVar[str] = "plan file"
    remedy: ClassVar[str] = "write one with `mme plan ... --out FILE`"
    error: ClassVar[type[UserError]] = PlanFileError

    instance_type: str
    instance_count: int = Field(ge=1)
    autoscaling: Autoscaling
    shards: int = Field(1, ge=1)
    model_cache: Literal["enabled", "disabled"] = "enabled"
    region: str | None = None


def write_plan_file(plan: PlanFile, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False))
    return path


def read_plan_file(path: Path) -> PlanFile:
    try:
        doc: Any = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise PlanFileError(f"plan file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise PlanFileError(f"plan file {path}: not YAML ({e})") from None
    return PlanFile.parse(doc, f"plan file {path}")
