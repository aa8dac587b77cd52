"""What a search leaves behind: typed trial records and the run directory that holds them.

Knows nothing of Ray, Optuna or torch, so reports and the CLI read results without them.
"""

from autotune.results.records import (
    MEASUREMENTS,
    SCHEMA_VERSION,
    RecordFormatError,
    TrialRecord,
    ended_score,
    ended_status,
)
from autotune.results.rundir import (
    BEST_FILE,
    SCREENING_FILE,
    SEARCH_FILE,
    STUDY_FILE,
    TRIALS_FILE,
    RunDirectory,
    check_writable,
    write_text,
)
from autotune.results.screening import CUT, REFUSED, SCREEN_SCHEMA_VERSION, ScreenRecord

__all__ = [
    "BEST_FILE",
    "CUT",
    "MEASUREMENTS",
    "SCHEMA_VERSION",
    "SCREEN_SCHEMA_VERSION",
    "SCREENING_FILE",
    "SEARCH_FILE",
    "STUDY_FILE",
    "ScreenRecord",
    "TRIALS_FILE",
    "REFUSED",
    "RecordFormatError",
    "RunDirectory",
    "TrialRecord",
    "check_writable",
    "ended_score",
    "ended_status",
    "write_text",
]
