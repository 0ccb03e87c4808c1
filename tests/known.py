"""The values the addon tests know the world by: the control plane, the API key, the sessions,
their JWTs, the VM that serves them, and the addon's options for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CP = "https://api.example.test"
CP_HOST = "api.example.test"
API_KEY = "sk-secret"
SID = "sess-a1b2c3"
SID2 = "sess-d4e5f6"
JWT_SECRET_PART = "SIGNATURE-secret-part"
JWT = f"eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzZXNzLWExYjJjMyJ9.{JWT_SECRET_PART}"
JWT2 = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzZXNzLWQ0ZTVmNiJ9.OTHER-secret-part"
VM_HOST = "proxy.iad.vm.test"
VM_PORT = 8443
VM_BASE = f"https://{VM_HOST}:{VM_PORT}/browser/kernel"
GONE = {"code": "browser_gone", "message": "browser not found"}
CP_BODY = {"events": [{"seq": 1, "type": "console"}], "source": "control-plane"}

# Telemetry is routed explicitly, as the reference's tests do.
TEST_OPTIONS: dict[str, Any] = {
    "browserrouting_control_plane": CP,
    "browserrouting_vm_hosts": "*.vm.test",
    "browserrouting_subresources": "curl,telemetry,fs,process,computer",
}
