"""Judging a value against a limit on its rounded value, as GB/T 8170 rounds reported values.

A computed value carries binary floating-point noise: the mean of dust samples
averaging exactly 1.000 mg/m³ comes out as 1.0000000000000002, a night of
constant 55.0 dB as a Leq of 55.00000000000003. Judged raw, both are breaches
of a compliant site. So a value is rounded before it is compared with its
limit:

- to `decimals` places: configured per KPI (`[kpi] judge_decimals`) or per
  metric rule (`judge_decimals`), by default **one decimal more than the limit
  is written with** (`written_decimals`: 1.0 mg/m³ → 2, so 1.00; the
  GB 12348 table's 55 dB → 1, so 55.0; 85.0 % → 2);
- half to even on the *decimal* representation of the float (GB/T 8170
  "四舍六入五成双": a dropped 5 followed by nothing rounds to the even digit),
  so 1.005 → 1.00 and 1.015 → 1.02, as a person reading the printed value
  would round it. The float's shortest repr is that decimal representation.

The rounded value is the one judged, stored (`KpiValue.value`, the raw one in
`raw_value`), shown by `greenmine kpi show` and written in the email.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

#: the most places a value is judged at (a float holds about 15 significant digits)
MAX_DECIMALS = 9


def written_decimals(limit: float | int) -> int:
    """Decimals of the limit as written: its shortest representation (1.0 → 1, 0.08 → 2, 55 → 0, 1e-05 → 5)."""
    if isinstance(limit, bool) or not math.isfinite(limit):
        return 0
    exp = Decimal(repr(limit)).as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def default_decimals(limit: float | int) -> int:
    """One decimal more than the limit is written with (capped at MAX_DECIMALS)."""
    return min(MAX_DECIMALS, written_decimals(limit) + 1)


def round_half_even(value: float, decimals: int) -> float:
    """`value` rounded to `decimals` places, half to even on its decimal representation (GB/T 8170)."""
    if not math.isfinite(value):
        return value
    try:
        q = Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    except InvalidOperation:  # more digits than the context holds: already finer than any judging
        return value
    out = float(q)
    return 0.0 if out == 0 else out  # no "-0.0" in an email


def judged(value: float | None, limit: float | int | None, decimals: int | None = None) -> tuple[float | None, int | None]:
    """(the value as judged, the decimals used); a value without a limit is not judged and stays as it is."""
    if value is None or limit is None:
        return value, None
    d = default_decimals(limit) if decimals is None else decimals
    return round_half_even(value, d), d


def fmt(value: float, decimals: int) -> str:
    """The judged value as written: exactly `decimals` places (1.00, 55.0)."""
    return f"{value:.{decimals}f}"
