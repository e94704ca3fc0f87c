"""The stages every component goes through, in order (a stage that does not apply is skipped)."""

from sdbuild.stages.chunk import ChunkStage
from sdbuild.stages.compress import CompressStage
from sdbuild.stages.convert import ConvertStage
from sdbuild.stages.verify import VerifyStage

COMPONENT_STAGES = (ConvertStage(), CompressStage(), ChunkStage(), VerifyStage())
