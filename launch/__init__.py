"""Starting, crashing, pausing and stopping the processes of a test or a benchmark run.

One launcher for everything the project starts: a :class:`Supervisor` runs named
:class:`ProcessSpec` s on a backend, host processes (``"process"``) or one container each
(``"docker"``), with health waits, kill -9 and restart, pause and resume, CPU accounting and a
teardown that leaves nothing behind. :mod:`launch.ports` picks loopback ports for them.
"""

from launch.ports import free_port, free_ports, port_is_free, wait_tcp
from launch.spec import DeployError, ProcessSpec
from launch.supervisor import BACKENDS, Supervisor, harness_cpu_s, machine_busy_s

__all__ = [
    "BACKENDS",
    "DeployError",
    "ProcessSpec",
    "Supervisor",
    "free_port",
    "free_ports",
    "harness_cpu_s",
    "machine_busy_s",
    "port_is_free",
    "wait_tcp",
]
