"""SecureMesh: zero-trust middleware for cloud-edge-end computing.

Importing ``securemesh`` is cheap on purpose (the device SDK imports it on
small machines): subpackages are imported explicitly by whoever needs them.
"""

from securemesh.errors import LocalError, RemoteError, SecureMeshError

__version__ = "0.1.0"

__all__ = ["LocalError", "RemoteError", "SecureMeshError", "__version__"]
