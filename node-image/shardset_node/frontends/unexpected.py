"""What a front end logs about an exception nobody expected (a bug): one line naming
the exception and where it was raised, never a multi-line traceback in the JSON log."""

from __future__ import annotations

import traceback


def cause(e: BaseException) -> dict[str, str]:
    """The exception and the innermost frame that raised it, as log fields."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else "?"
    return {"error": f"{type(e).__name__}: {e}"[:500], "raised_at": where}
