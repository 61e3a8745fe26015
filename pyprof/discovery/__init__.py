"""Finding the host's JVMs (containers included) and naming them: service, pid, container, JDK, host."""

from pyprof.discovery.cgroup import container_id_from_cgroup, read_container_id
from pyprof.discovery.cmdline import Selection, ServiceRule, main_of
from pyprof.discovery.scanner import JvmScanner, JvmTarget, ScanResult, Skipped

__all__ = ["JvmScanner", "JvmTarget", "ScanResult", "Selection", "ServiceRule", "Skipped",
           "container_id_from_cgroup", "main_of", "read_container_id"]
