"""Units of time and other constants that several modules share (one definition each)."""

from __future__ import annotations

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
DAY_US = US_PER_DAY  # alias used by the data layer
US_PER_YEAR = 365.25 * US_PER_DAY  # a Julian year: ages are (time - birth) / US_PER_YEAR
DAYS_PER_YEAR = 365.25
