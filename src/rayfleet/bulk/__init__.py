"""Bulk translation of a JSON Lines file with Ray Data: ``rayfleet translate-file``.

Modules:
- ``plan.py``      the job's options, the work-dir layout, the input scan, the
                   manifest that makes a run resumable, and the final assembly;
- ``udf.py``       the Ray Data UDF: a translator actor that reads, parses and
                   translates chunks of the input with a serving backend;
- ``workload.py``  the Ray Job entrypoint (the driver, on the cluster);
- ``launch.py``    the client side: check, submit, follow, stop.
"""

from rayfleet.errors import BulkError

__all__ = ["BulkError"]
