"""In a supervised run of the upstream suites (``LAUNCHES`` set), the subprocesses the
tests start wrap jupyter_client's ``LocalProvisioner`` too. (On PYTHONPATH it hides any
other sitecustomize; the pyenv Python this was written under has none.)"""

import os

if os.environ.get("KERNEL_DOCTOR_UPSTREAM_LAUNCHES"):
    import kernel_doctor_upstream

    kernel_doctor_upstream.wrap_on_import()
