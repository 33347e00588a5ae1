"""Route modules, one per resource; ``ROUTERS`` is every router the app serves, in order."""

from cloud_service.api.routes import (
    datasets,
    deltas,
    devices,
    health,
    jobs,
    models,
    rollouts,
    tokens,
    versions,
)

ROUTERS = tuple(m.router for m in (health, models, datasets, jobs, versions, deltas, devices,
                                   rollouts, tokens))
