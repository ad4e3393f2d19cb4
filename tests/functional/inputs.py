"""Edits of a run input, for the tables of bad and good inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Detail = dict[str, Any]
Edit = Callable[[Detail], Any]


def change(**fields: Any) -> Edit:
    return lambda detail: detail | fields


def without(*path: str) -> Edit:
    def edit(detail: Detail) -> Detail:
        node = detail
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return detail

    return edit


def pre_script(**fields: Any) -> Edit:
    def edit(detail: Detail) -> Detail:
        detail["RemoteRunCommandDetails"]["PreBackupScriptDetails"] |= fields
        return detail

    return edit


def backup(**fields: Any) -> Edit:
    def edit(detail: Detail) -> Detail:
        detail["BackupDetails"] |= fields
        return detail

    return edit


def scripts(**fields: Any) -> Edit:
    def edit(detail: Detail) -> Detail:
        for details in detail["RemoteRunCommandDetails"].values():
            details |= fields
        return detail

    return edit


def post_script(**fields: Any) -> Edit:
    def edit(detail: Detail) -> Detail:
        detail["RemoteRunCommandDetails"]["PostBackupScriptDetails"] |= fields
        return detail

    return edit


def both(*edits: Edit) -> Edit:
    def edit(detail: Detail) -> Any:
        for one in edits:
            detail = one(detail)
        return detail

    return edit
