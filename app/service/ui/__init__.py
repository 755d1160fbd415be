"""The report pages served on the UI address (reach them with `kubectl port-forward`)."""

from app.service.ui.render import (
    IndexRow,
    RunningRow,
    render_index_page,
    render_report_page,
    render_running_page,
)

__all__ = ["IndexRow", "RunningRow", "render_index_page", "render_report_page", "render_running_page"]
