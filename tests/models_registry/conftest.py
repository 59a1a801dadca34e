"""Registry fixtures: a private storage and key directory per test, a moto S3 server, uploads through the API."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from moto.server import ThreadedMotoServer

from audit.actors import Actor
from models_registry.models import ModelVersion, RegisteredModel
from models_registry.services import model_create, model_version_create, model_version_publish
from tests.factories import TEST_ACTOR

MODELS = "/api/v1/models/"
S3_BUCKET = "fogdeck-test-artifacts"


@pytest.fixture(autouse=True)
def registry_settings(settings: Any, tmp_path: Any) -> Any:
    """Local storage and signing keys under this test's tmp_path; no SIGNING_KEY from the environment."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media"), "base_url": None},
        },
    }
    settings.SIGNING_KEY = ""
    settings.SIGNING_KEY_DIR = tmp_path / "signing-keys"
    settings.MAX_ARTIFACT_SIZE_MB = 5
    return settings


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's standalone S3 server on a free port, as a real HTTP endpoint; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    client.create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_storage(settings: Any, moto_s3: str) -> str:
    """STORAGES["default"] switched to django-storages' S3Storage on the moto server (options as in settings.py)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": S3_BUCKET,
                "endpoint_url": moto_s3,
                "access_key": "test",
                "secret_key": "test",
                "region_name": "us-east-1",
                "default_acl": None,
                "querystring_auth": True,
                "file_overwrite": False,
                "addressing_style": "path",
                "signature_version": "s3v4",
            },
        },
    }
    return moto_s3


def s3_keys(endpoint: str) -> list[str]:
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    return [item["Key"] for item in client.list_objects_v2(Bucket=S3_BUCKET).get("Contents", [])]


@pytest.fixture
def registered_model(db: Any) -> RegisteredModel:
    return model_create(actor=TEST_ACTOR, name="defect-detector", task="classification")


def artifact_file(data: bytes, name: str = "model.onnx") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


@pytest.fixture
def upload(admin_client: Any) -> Callable[..., Any]:
    """POST a version through the API as multipart; JSON-valued fields are sent as JSON text."""

    def post(model: RegisteredModel, data: bytes, client: Any = None, **fields: Any) -> Any:
        form: dict[str, Any] = {"artifact": artifact_file(data), "format": "onnx", "framework": "pytorch"}
        for key, value in fields.items():
            form[key] = json.dumps(value) if isinstance(value, dict | list) else value
        return (client or admin_client).post(f"{MODELS}{model.pk}/versions/", form, format="multipart")

    return post


def make_version(
    model: RegisteredModel,
    data: bytes = b"onnx-bytes",
    *,
    publish: bool = False,
    actor: Actor = TEST_ACTOR,
    **fields: Any,
) -> ModelVersion:
    fields.setdefault("format", "onnx")
    fields.setdefault("framework", "pytorch")
    version = model_version_create(actor=actor, model=model, artifact=io.BytesIO(data), **fields)
    return model_version_publish(actor=actor, version=version) if publish else version


@pytest.fixture
def registry_broadcasts(settings: Any, django_capture_on_commit_callbacks: Any) -> Callable[[Callable[[], Any]], list]:
    """`run(action)`: run `action` (its on-commit callbacks executed) and return, in order, what the
    registry's channel-layer group received. On an in-memory layer, so the test reads the same on both
    environments (the embedded default's layer relays to a web server the tests don't run)."""
    import asyncio

    from asgiref.sync import async_to_sync, sync_to_async
    from channels.layers import get_channel_layer

    from models_registry.lifecycle import REGISTRY_GROUP

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    def act(action: Callable[[], Any]) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            action()

    async def listen(action: Callable[[], Any]) -> list:
        # one event loop for the subscription, the broadcasts (their async_to_sync joins this loop) and reads
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(REGISTRY_GROUP, channel)
        await sync_to_async(act)(action)  # on this (the test's) thread and database connection
        received = []
        while True:
            try:
                received.append(await asyncio.wait_for(layer.receive(channel), timeout=0.2))
            except TimeoutError:
                return received

    return lambda action: async_to_sync(listen)(action)
