"""The service's error type: an HTTP status and a message for the caller, never a stack trace.

Errors are JSON ``{"error": message, "detail": [...]}``: 4xx name the field or what to do, 503 names the model to
train.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error with an HTTP status and a message for the caller (never a stack trace)."""

    def __init__(self, status: int, message: str, detail: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail

    def body(self) -> dict:
        """The JSON body of the error response."""
        return {"error": self.message} | ({"detail": self.detail} if self.detail else {})

    def response(self) -> JSONResponse:
        """The error as a response."""
        return JSONResponse(self.body(), status_code=self.status)


def unavailable(name: str, why: str) -> ApiError:
    """503 for an endpoint whose model is not loaded."""
    return ApiError(503, f"model '{name}' is not available: {why}")
