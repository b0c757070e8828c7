"""server/errors.py on a stand-in FastAPI app: which failures become a 400, which stay a 500."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, model_validator
from starlette.testclient import TestClient

from zspa_server.errors import OpenAIErrorMiddleware


class Body(BaseModel):
    options: dict | list | None = None
    count: int = 0

    @model_validator(mode="before")
    @classmethod
    def check_options(cls, data):
        # Like vLLM's check_structured_outputs_count: assumes a dict before pydantic checked it.
        if isinstance(data, dict) and data.get("options") is not None:
            data["options"].get("kind")
        return data


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/validate")
    async def validate(body: Body):
        return {"ok": True}

    @app.post("/bug")
    async def bug(body: Body):
        return {}.missing  # a server bug after validation: must stay a 500

    app.add_middleware(OpenAIErrorMiddleware)
    return app


@pytest.fixture(scope="module")
def client():
    return TestClient(make_app(), raise_server_exceptions=False)


def test_a_validator_crash_on_the_body_is_a_400_naming_the_validator(client):
    response = client.post("/validate", json={"options": []})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert "Body.check_options" in error["message"] and "AttributeError" in error["message"]


def test_a_valid_body_passes(client):
    assert client.post("/validate", json={"options": {"kind": 1}}).json() == {"ok": True}


def test_a_server_bug_after_validation_stays_a_500(client):
    assert client.post("/bug", json={}).status_code == 500


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "message"),
    [
        ("GET", "/nowhere", None, 404, "Not Found"),
        ("GET", "/validate", None, 405, "Method Not Allowed"),
        ("POST", "/validate", b"\x88", 400, "There was an error parsing the body"),
    ],
)
def test_framework_errors_get_openai_error_shape(client, method, path, content, status, message):
    headers = {"content-type": "application/json"}
    response = client.request(method, path, content=content, headers=headers)
    assert response.status_code == status
    assert response.json() == {
        "error": {"message": message, "type": response.reason_phrase, "param": None, "code": status}
    }
    assert int(response.headers["content-length"]) == len(response.content)


def test_fastapi_validation_error_list_becomes_the_message(client):
    # FastAPI's default 422 body is {"detail": [...]}; vLLM formats its own, a bare app does not.
    response = client.post("/validate", json={"count": "x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == 422 and '"count"' in error["message"]
