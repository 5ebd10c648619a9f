"""kernel-doctor's Jupyter Server extension: REST endpoints for the reports and the live
state of supervised kernels, a dead kernel's cause as its ``reason`` in the server's own
kernel model, metrics on the server's Prometheus ``/metrics``, and (``provisioner``)
supervised kernels whose command is missing failing to start as plain ones do.

Enabled on install (``jupyter_server_config.d/kernel_doctor.json``). It fails open: if
it cannot load, the server runs as before and its log says why.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "kernel_doctor.server"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    try:
        from .handlers import setup_handlers
        from .reasons import start_reasons

        setup_handlers(serverapp.web_app)
        start_reasons(serverapp)
    except Exception as exc:  # never the reason a server will not start
        serverapp.log.warning(
            "kernel-doctor: server extension not loaded (%s: %s)", type(exc).__name__, exc
        )
        return
    try:  # supervised kernels whose command is missing fail to start, as plain ones do
        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        from ..provisioner import use_by_default

        factory = KernelProvisionerFactory.instance(parent=serverapp.kernel_manager)
        use_by_default(factory, serverapp.config)
    except Exception as exc:
        serverapp.log.warning("kernel-doctor: no provisioner (%s: %s)", type(exc).__name__, exc)
    try:  # prometheus_client is the server's, and optional: the rest works without it
        from .metrics import start_metrics

        start_metrics(serverapp)
    except Exception as exc:
        serverapp.log.warning("kernel-doctor: no metrics (%s: %s)", type(exc).__name__, exc)
    serverapp.log.info("kernel-doctor: server extension loaded (/kernel-doctor/api)")
