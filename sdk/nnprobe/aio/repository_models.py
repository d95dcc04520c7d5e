"""Asyncio twins of ``nnprobe.repository_models.RepositoryModelMethods``: ``upload_model``, ``list_models``
and ``delete_model`` of the asyncio ``SequenceClient`` and ``AttentionClient``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from nnprobe import repository_models
from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault
from nnprobe._requests import request_arguments
from nnprobe.aio._base import AsyncBaseClient
from nnprobe.progress import ProgressCallback
from nnprobe.progress_bar import reporting
from nnprobe.repository_models import RepositoryModel, RepositoryUpload


class RepositoryModelMethods(AsyncBaseClient):
    """The model repository methods, awaited."""

    _stub: Any
    _MODELS_PB: ModuleType

    async def list_models(
        self, *, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[RepositoryModel]:
        response = await self._unary(self._stub.ListModels, self._MODELS_PB.ListModelsRequest(), timeout)
        return [repository_models.repository_model(m) for m in response.models]

    async def upload_model(
        self,
        path: str | Path,
        *,
        name: str,
        config: str | Path | Mapping[str, Any] | None = None,
        version: int = 0,
        format: str | None = None,
        on_progress: ProgressCallback | None = None,
        progress: bool = True,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> RepositoryUpload:
        arguments = request_arguments(locals())
        with reporting(progress, on_progress, f"upload {name}", "B") as report:
            messages = repository_models.upload_messages(self._MODELS_PB, **arguments, on_progress=report)
            return repository_models.upload_result(
                await self._unary(self._stub.UploadModel, messages, timeout)
            )

    async def delete_model(
        self, name: str, *, version: int = 0, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> list[int]:
        request = self._MODELS_PB.DeleteModelRequest(name=name, version=version)
        return list((await self._unary(self._stub.DeleteModel, request, timeout)).removed_versions)
