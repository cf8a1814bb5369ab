"""The committed contract artifacts must be what contracts/build.mjs makes of the committed sources."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = REPO_ROOT / "contracts"
COMMITTED = CONTRACTS / "artifacts"


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (REPO_ROOT / "node_modules" / "solc" / "package.json").is_file():
        return "node_modules/solc is missing (run `npm ci`)"
    return None


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("artifacts")
    subprocess.run(
        ["node", str(CONTRACTS / "build.mjs"), "--out", str(out)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_every_source_has_an_artifact() -> None:
    sources = {p.stem for p in (CONTRACTS / "src").glob("*.sol")}
    artifacts = {p.stem for p in COMMITTED.glob("*.json")}
    assert sources and sources <= artifacts


def test_committed_artifacts_match_a_fresh_build(rebuilt: Path) -> None:
    fresh = sorted(p.name for p in rebuilt.glob("*.json"))
    assert fresh == sorted(p.name for p in COMMITTED.glob("*.json")), "run `npm run build:contracts`"
    for name in fresh:
        new, old = json.loads((rebuilt / name).read_text()), json.loads((COMMITTED / name).read_text())
        assert new["bytecode"] == old["bytecode"], f"{name} is stale: run `npm run build:contracts`"
        assert new["deployedBytecode"] == old["deployedBytecode"], f"{name} is stale"
        assert new == old, f"{name} differs beyond bytecode (ABI or metadata): rebuild it"


def test_artifacts_record_their_source_hash() -> None:
    for path in COMMITTED.glob("*.json"):
        artifact = json.loads(path.read_text())
        source = REPO_ROOT / artifact["sourceName"]
        assert artifact["sourceSha256"] == hashlib.sha256(source.read_bytes()).hexdigest(), path.name
