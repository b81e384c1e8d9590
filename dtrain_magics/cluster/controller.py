"""The ipyparallel controller our clusters run: ipyparallel's own, with a quieter log.

ipyparallel's hub logs ``unhandled iopub msg_type: 'data_message'`` as a warning for every
message published with ``datapub.publish_data``, the channel rank telemetry travels on: a line
per rank several times a second, for as long as training runs. This entry point drops exactly
that warning and leaves every other log line, and everything else, as ipyparallel has it.
"""

from __future__ import annotations

import logging
import sys

TELEMETRY_WARNING = "unhandled iopub msg_type: %r"


class TelemetryWarningFilter(logging.Filter):
    """Drops the hub's warning about ``data_message``, the one message type telemetry uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == TELEMETRY_WARNING and record.args == ("data_message",))


def command() -> list[str]:
    """The command that starts this controller (``LocalControllerLauncher.controller_cmd``)."""
    return [sys.executable, "-m", "dtrain_magics.cluster.controller"]


def main() -> None:
    """Run ipyparallel's controller with the telemetry warning filtered out."""
    from ipyparallel.controller.app import IPController
    from ipyparallel.controller.app import main as ipcontroller

    logging.getLogger(IPController.__name__).addFilter(TelemetryWarningFilter())
    ipcontroller()


if __name__ == "__main__":
    main()
