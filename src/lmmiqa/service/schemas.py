"""Pydantic request/response models of the HTTP API (created on first use; pydantic is imported lazily)."""

from __future__ import annotations

from typing import Any

_MODELS: dict[str, Any] = {}


def api_models() -> dict[str, Any]:
    """Pydantic request/response models (created on first use)."""
    if _MODELS:
        return _MODELS
    from pydantic import BaseModel, ConfigDict, Field

    class ImageData(BaseModel):
        """An image as base64 (or a ``data:image/...;base64,`` URL) with an optional name echoed as ``image``."""

        model_config = ConfigDict(extra="forbid")
        data: str = Field(description="base64 bytes or a data: URL (URLs of other schemes are refused)")
        name: str | None = Field(default=None, max_length=255, description="reported as the result's 'image'")

    class ScoreJSONRequestModel(BaseModel):
        """JSON body of ``POST /v1/score`` and ``POST /v1/assess``."""

        model_config = ConfigDict(extra="forbid", title="ScoreJSONRequest")
        images: list[str | ImageData] = Field(description="base64 strings, data: URLs, or {data, name} objects")
        method: str | None = Field(default=None, description="a served method (default: the server's)")
        options: dict[str, Any] = Field(
            default_factory=dict, description="per-request method options (see GET /v1/methods)"
        )

    class ScoreResultModel(BaseModel):
        """``ScoreResult.to_dict()``: one image's quality as judged by one method."""

        image: str
        score: float | None
        higher_is_better: bool
        scale: list[float] | None
        method: str
        model: str | list[str] | None
        probabilities: dict[str, float] | None
        details: dict[str, Any]
        error: str | None
        timings: dict[str, float]

    class ScoreResponse(BaseModel):
        """Results in upload order."""

        results: list[ScoreResultModel]

    class ErrorDetail(BaseModel):
        status: int
        type: str
        message: str

    class ErrorResponse(BaseModel):
        """Every non-2xx answer."""

        error: ErrorDetail

    _MODELS.update(
        ImageData=ImageData,
        ScoreJSONRequest=ScoreJSONRequestModel,
        ScoreResultModel=ScoreResultModel,
        ScoreResponse=ScoreResponse,
        ErrorResponse=ErrorResponse,
    )
    return _MODELS
