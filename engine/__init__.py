"""Rungs: a progressive HLS transcoding engine.

Decode once, publish the lowest rung first, add each higher rung the moment it closes.
"""

from __future__ import annotations

import logging

from engine.audio import AudioSettings
from engine.errors import (
    DecodeError,
    EncoderError,
    InvalidOptionsError,
    InvalidSourceError,
    JobCancelledError,
    OutputExistsError,
    OutputWriteError,
    RungsError,
    UnsupportedSourceError,
)
from engine.job import Job, JobEvent, JobState, TranscodeOptions
from engine.ladder import LadderOptions, Rung, RungSettings, plan_ladder
from engine.probe import SourceInfo, open_source

# A library logs; the application decides where logs go (the CLI: only with --verbose).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AudioSettings",
    "DecodeError",
    "EncoderError",
    "InvalidOptionsError",
    "InvalidSourceError",
    "Job",
    "JobCancelledError",
    "JobEvent",
    "JobState",
    "LadderOptions",
    "OutputExistsError",
    "OutputWriteError",
    "Rung",
    "RungSettings",
    "RungsError",
    "SourceInfo",
    "TranscodeOptions",
    "UnsupportedSourceError",
    "open_source",
    "plan_ladder",
]
