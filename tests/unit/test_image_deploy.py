"""deploy/image/: the compose service the IMAGE orchestrator discovers segserve by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_the_compose_service_has_the_labels_the_orchestrator_reads() -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO / "deploy/image/docker-compose.yml").read_text())
    service = compose["services"]["semantic-segmentation"]
    labels = service["labels"]
    assert labels["ca.mcgill.a11y.image.preprocessor"] >= 1
    assert labels["ca.mcgill.a11y.image.cacheTimeout"] > 0
    assert labels["ca.mcgill.a11y.image.optional_dependencies"] == "content-categoriser"
    # The port it announces is the one `serve run serve_config.yaml` listens on.
    served = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert labels["ca.mcgill.a11y.image.port"] == served["http_options"]["port"]
    assert service["command"] == ["serve", "run", "serve_config.yaml"]
