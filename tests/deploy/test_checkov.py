"""checkov over the rendered chart (every values set, and everything switched on): each failed check is
covered by an entry with a written reason in deploy/helm/checkov-skips.yaml, and each entry still covers
a finding. checkov runs from its own virtualenv (.venv-checkov), offline."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.processes import REPO_ROOT
from tests.deploy.chart import VALUE_SETS, checkov, everything_args, rendered_text

SKIPS = REPO_ROOT / "deploy" / "helm" / "checkov-skips.yaml"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("rendered")
    for name, args in VALUE_SETS.items():
        (folder / f"{name}.yaml").write_text(rendered_text(tuple(args)))
    (folder / "everything.yaml").write_text(rendered_text(tuple(everything_args(folder.parent))))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    cmd = [str(checkov()), "--directory", str(folder), "--framework", "kubernetes", "--output", "json"]
    proc = subprocess.run([*cmd, "--quiet", "--skip-download"], capture_output=True, text=True, env=env, timeout=600)
    # checkov exits 1 when a check fails; anything else is checkov failing.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    return result[0] if isinstance(result, list) else result


def skips() -> list[dict[str, Any]]:
    return yaml.safe_load(SKIPS.read_text())


def covering(finding: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in skips():
        if entry["check"] == finding["check_id"] and any(
            fnmatch.fnmatch(finding["resource"], p) for p in entry["resources"]
        ):
            yield entry


def test_checkov_read_every_rendered_object(report: dict[str, Any]) -> None:
    summary = report["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 100 and summary["passed"] > 1000, summary


def test_every_failed_check_has_a_written_reason(report: dict[str, Any]) -> None:
    unexplained = sorted(
        {
            f"{f['check_id']} {f['resource']}: {f['check_name']}"
            for f in report["results"]["failed_checks"]
            if not any(covering(f))
        }
    )
    assert not unexplained, "checkov findings with no entry in checkov-skips.yaml:\n" + "\n".join(unexplained)


def test_every_skip_entry_still_covers_a_finding(report: dict[str, Any]) -> None:
    failed = report["results"]["failed_checks"]
    for entry in skips():
        assert len(entry["reason"]) > 60, f"{entry['check']}: give the reason"
        hits = [f for f in failed if entry in list(covering(f))]
        assert hits, f"{entry['check']} {entry['resources']} no longer fails: remove the entry"
        assert {f["check_name"] for f in hits} == {entry["name"]}


def test_the_skip_list_explains_checks_not_hides_resources() -> None:
    """A wildcard over every resource only for checks that are about every image alike."""
    for entry in skips():
        if "*" in entry["resources"]:
            assert entry["check"] in {"CKV_K8S_43", "CKV_K8S_15"}, entry["check"]


def test_a_hardening_regression_would_be_a_finding(tmp_path: Path) -> None:
    """checkov sees what the chart sets: a container with a writable root filesystem fails CKV_K8S_22."""
    rendered = [d for d in yaml.safe_load_all(rendered_text(())) if d]
    gateway = next(d for d in rendered if d["kind"] == "Deployment")
    gateway["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(gateway))
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    cmd = [str(checkov()), "--file", str(tmp_path / "one.yaml"), "--framework", "kubernetes", "--output", "json"]
    proc = subprocess.run(
        [*cmd, "--quiet", "--skip-download", "--check", "CKV_K8S_22"], capture_output=True, text=True, env=env
    )
    result = json.loads(proc.stdout)
    assert [f["check_id"] for f in result["results"]["failed_checks"]] == ["CKV_K8S_22"]
