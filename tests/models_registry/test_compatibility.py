"""One compatibility function, every reason, and the fleet-wide endpoint."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.services import group_create
from models_registry.compatibility import (
    DeviceProfile,
    VersionRequirements,
    incompatibility_reasons,
    version_key,
)
from tests.factories import TEST_ACTOR, DeviceFactory

from .conftest import MODELS, make_version

pytestmark = pytest.mark.django_db

RPI = DeviceProfile("aarch64", 4096, "none", (("onnxruntime", "1.18"),))
JETSON = DeviceProfile("aarch64", 8192, "gpu", (("onnxruntime", "1.16"), ("tensorrt", "8.6")))
GATEWAY = DeviceProfile("x86_64", 512, "none", (("onnxruntime", "1.18"), ("openvino", "2024.1")))
ARMV7 = DeviceProfile("armv7l", 1024, "none", (("tflite", "2.14"),))

ONNX = VersionRequirements(format="onnx", min_runtime_version="1.17", archs=("aarch64", "x86_64"), min_memory_mb=1024)
TENSORRT = VersionRequirements(format="tensorrt", min_runtime_version="8.5", min_memory_mb=2048, accelerator="gpu")


@pytest.mark.parametrize(
    ("requirements", "device", "expected"),
    [
        (ONNX, RPI, []),
        (ONNX, JETSON, []),  # onnxruntime 1.16 is too old, but its TensorRT runs ONNX too
        (ONNX, GATEWAY, ["needs 1024 MB, device has 512 MB"]),
        (
            ONNX,
            ARMV7,
            [
                "format onnx not supported by runtimes [tflite 2.14]",
                "architecture armv7l not in [aarch64, x86_64]",
            ],
        ),
        (
            TENSORRT,
            RPI,
            [
                "format tensorrt not supported by runtimes [onnxruntime 1.18]",
                "requires gpu accelerator, device has none",
            ],
        ),
        (TENSORRT, JETSON, []),
        (
            TENSORRT,
            GATEWAY,
            [
                "format tensorrt not supported by runtimes [onnxruntime 1.18, openvino 2024.1]",
                "needs 2048 MB, device has 512 MB",
                "requires gpu accelerator, device has none",
            ],
        ),
        (
            TENSORRT,
            ARMV7,
            [
                "format tensorrt not supported by runtimes [tflite 2.14]",
                "needs 2048 MB, device has 1024 MB",
                "requires gpu accelerator, device has none",
            ],
        ),
    ],
    ids=["onnx-rpi", "onnx-jetson", "onnx-gateway", "onnx-armv7", "trt-rpi", "trt-jetson", "trt-gateway", "trt-armv7"],
)
def test_compatibility_matrix(requirements, device, expected):
    assert incompatibility_reasons(requirements, device) == expected


def test_runtime_requirement_narrows_the_format_and_versions_compare_numerically():
    only_ort = VersionRequirements(format="onnx", runtime="onnxruntime", min_runtime_version="1.17")
    assert incompatibility_reasons(only_ort, JETSON) == ["needs onnxruntime >= 1.17, device has onnxruntime 1.16"]
    assert incompatibility_reasons(only_ort, ARMV7) == ["needs runtime onnxruntime, device has runtimes [tflite 2.14]"]
    too_old = DeviceProfile("aarch64", 4096, "none", (("onnxruntime", "1.9"),))
    assert incompatibility_reasons(ONNX, too_old) == ["needs onnxruntime >= 1.17, device has onnxruntime 1.9"]
    assert version_key("1.18") > version_key("1.9") and version_key("2024.1") > version_key("2023.3.0")
    assert version_key("1.18.0-rc1") == (1, 18, 0)


def test_compatibility_endpoint_counts_reasons_over_filtered_devices(viewer_client, registered_model):
    make_version(
        registered_model,
        publish=True,
        requirements={"min_runtime_version": "1.17", "min_memory_mb": 1024},
    )
    pis = [DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}], tags=["line-1"]) for _ in range(3)]
    DeviceFactory(memory_mb=512, tags=["line-1"])
    DeviceFactory(arch="armv7l", memory_mb=512, runtimes=[{"name": "tflite", "version": "2.14"}], tags=["line-2"])
    url = f"{MODELS}{registered_model.pk}/versions/1/compatibility/"

    body = viewer_client.get(url).json()
    assert body == {
        "compatible": 3,
        "incompatible": 2,
        "total": 5,
        "reasons": {
            "needs 1024 MB, device has 512 MB": 2,
            "format onnx not supported by runtimes [tflite 2.14]": 1,
        },
    }
    assert viewer_client.get(f"{url}?tag=line-2").json()["incompatible"] == 1
    group = group_create(actor=TEST_ACTOR, name="first two", kind="static")
    group.devices.add(*pis[:2])
    assert viewer_client.get(f"{url}?group={group.pk}").json() == {
        "compatible": 2,
        "incompatible": 0,
        "total": 2,
        "reasons": {},
    }
    assert viewer_client.get(f"{url}?tier=satellite").status_code == 400


def test_compatibility_queries_do_not_grow_with_the_fleet(viewer_client, registered_model):
    make_version(registered_model, publish=True)
    url = f"{MODELS}{registered_model.pk}/versions/1/compatibility/"
    for _ in range(3):
        DeviceFactory()
    viewer_client.get(url)  # a token's first use in a minute also records last_used_at (one UPDATE)
    with CaptureQueriesContext(connection) as small:
        viewer_client.get(url)
    for _ in range(30):
        DeviceFactory(runtimes=[{"name": "onnxruntime", "version": "1.18"}, {"name": "tflite", "version": "2.14"}])
    with CaptureQueriesContext(connection) as large:
        assert viewer_client.get(url).json()["total"] == 33
    assert len(large.captured_queries) == len(small.captured_queries)
