"""docker/docker-compose.yml: Kafka 7.5.0 on localhost:9092, Kafka UI on 8090, the two topics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def published(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports", ()):
        if isinstance(port, dict):
            ports.add(int(port["published"]))
        else:
            ports.add(int(str(port).split(":")[-2]))
    return ports


def commands(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts.extend([value] if isinstance(value, str) else value)
    return "\n".join(parts)


def test_topics_are_created_with_their_partitions(services):
    created = {}
    for service in services.values():
        for line in commands(service).splitlines():
            if "kafka-topics" in line and "--create" in line:
                topic = re.search(r"--topic[ =](\S+)", line).group(1)
                created[topic] = int(re.search(r"--partitions[ =](\d+)", line).group(1))
    assert created == {"clickstream-events": 3, "clickstream-dlq": 1}


def test_init_service_runs_once_after_kafka_is_healthy(services):
    init = [s for s in services.values() if "--create" in commands(s)]
    assert len(init) == 1
    assert init[0].get("restart", "no") == "no"
    assert init[0]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "healthcheck" in services["kafka"]


def test_kafka_is_on_localhost_9092_and_the_ui_on_8090(services):
    assert 9092 in published(services["kafka"])
    env = services["kafka"]["environment"]
    assert "localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    ui = [s for s in services.values() if s["image"].startswith("provectuslabs/kafka-ui")]
    assert len(ui) == 1 and published(ui[0]) == {8090}
    assert ui[0]["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] in env["KAFKA_ADVERTISED_LISTENERS"]


def test_confluent_images_are_7_5_0(services):
    images = [s["image"] for s in services.values() if s["image"].startswith("confluentinc/")]
    assert "confluentinc/cp-kafka:7.5.0" in images
    assert all(image.endswith(":7.5.0") for image in images)
    assert all(":" in s["image"] and not s["image"].endswith(":latest") for s in services.values())
