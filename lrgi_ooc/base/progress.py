"""Progress bars: one place decides how long passes report (tqdm, with throughput)."""
from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm


def bar(total: float | None, desc: str, unit: str = "it", **kw: Any) -> tqdm:
    """A tqdm bar on stderr with scaled units (`1.2M edges/s`); LRGI_OOC_QUIET=1 hides it."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                mininterval=0.5, disable=os.environ.get("LRGI_OOC_QUIET") == "1" or None,
                **kw)
