"""The operator's controls over a running daemon: ``AdminService`` (behind the HTTP admin API)
and campaign progress."""

from kumoq.admin.progress import CampaignProgress
from kumoq.admin.service import AdminService

__all__ = ["AdminService", "CampaignProgress"]
