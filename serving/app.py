"""Where the pieces of the former ``serving/app.py`` live now (names kept importable from here for older imports).

- :mod:`serving.runtime`: :class:`Runtime`, the endpoints' logic over the served set;
- :mod:`serving.served`: :class:`Served`, one generation's pinned models and snapshots, and the load-time checks;
- :mod:`serving.routes`: the FastAPI routes mounted into the BentoML service;
- :mod:`serving.middleware`: API keys, body limits, route labels for metrics;
- :mod:`serving.bentoml_patches`: every use of BentoML private internals, behind one version check;
- :mod:`serving.worker`: per-worker process set-up (exit with the server, GC tuning);
- :mod:`serving.errors`: :class:`ApiError`.

New code imports from those modules; ``serving/service.py`` is what BentoML loads.
"""

from features.triage import DEFAULT_NOTES  # noqa: F401
from serving.bentoml_patches import (  # noqa: F401
    BENTOML_PATCHED,
    bind_apis_once,
    cancel_timeout_timers,
    check_bentoml_internals,
    label_metrics_by_route,
    quiet_client_errors,
)
from serving.errors import ApiError, unavailable  # noqa: F401
from serving.middleware import (  # noqa: F401
    HEALTH_PATHS,
    REAL_PATH,
    UI_PREFIX,
    UNMATCHED,
    GuardMiddleware,
    route_labeler,
    service_labeler,
)
from serving.routes import api, current_runtime, install  # noqa: F401
from serving.runtime import Runtime, _as_list, _day, _first  # noqa: F401
from serving.served import (  # noqa: F401
    MERCHANT_RISK,
    MODEL_NAMES,
    RETURN_VOLUME,
    SERIAL_RETURNERS,
    TICKET_TRIAGE,
    Served,
    _missing_params,
    load_served,
    served_features,
    signature_mismatch,
)
from serving.worker import GC_THRESHOLD, die_with_parent, tune_gc  # noqa: F401
