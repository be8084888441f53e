"""What profiles are for: marketing segments, risk alerts and category demand.

The applications read the profile core and add to it, never the other way round:
:mod:`~operators.apps.segments` evaluates JSON-defined conditions and RFM scores at event
time; :mod:`~operators.apps.risk` scores each event of a user for fraud and abuse;
:mod:`~operators.apps.demand` counts and forecasts demand per category in event-time buckets;
:mod:`~operators.apps.user_step` is the order they run in around the profile step.
"""

from operators.apps.demand import (
    DEMAND_TYPES,
    CategoryDemand,
    DemandForecaster,
    DemandParams,
    DemandReport,
    close_until,
    corrections,
    decode_demand,
    default_season,
    encode_demand,
    new_demand,
    next_close_ms,
    observe,
)
from operators.apps.risk import (
    KINDS,
    TAKEOVER_FEATURES,
    Alert,
    RiskParams,
    RiskState,
    alert_id,
    assess,
    load_risk_params,
    load_takeover_model,
    robust_log_stats,
    takeover_features,
    takeover_scorer,
)
from operators.apps.segments import (
    RFM_GROUPS,
    RfmCuts,
    SegmentBook,
    SegmentTransition,
    load_segment_book,
    memberships_from_transitions,
    parse_segment_book,
)
from operators.apps.user_step import (
    Applications,
    UserRecord,
    after_event,
    before_event,
    decode_record,
)

__all__ = [
    "DEMAND_TYPES",
    "KINDS",
    "RFM_GROUPS",
    "TAKEOVER_FEATURES",
    "Alert",
    "Applications",
    "CategoryDemand",
    "DemandForecaster",
    "DemandParams",
    "DemandReport",
    "RfmCuts",
    "RiskParams",
    "RiskState",
    "SegmentBook",
    "SegmentTransition",
    "UserRecord",
    "after_event",
    "alert_id",
    "assess",
    "before_event",
    "close_until",
    "corrections",
    "decode_demand",
    "decode_record",
    "default_season",
    "encode_demand",
    "load_risk_params",
    "load_segment_book",
    "load_takeover_model",
    "memberships_from_transitions",
    "new_demand",
    "next_close_ms",
    "observe",
    "parse_segment_book",
    "robust_log_stats",
    "takeover_features",
    "takeover_scorer",
]
