"""No secrets in the repository (issue 16, point 6): detect-secrets scans every file git tracks or would track.

The scanner is `detect-secrets` (Yelp) with its default plugins (AWS, GitHub, Slack, private keys, JWTs,
basic-auth URLs, `password = ...` keywords, high-entropy strings, ...) and default filters. The files are
those of `git ls-files --cached --others --exclude-standard`: committed ones and new ones not ignored, so a
secret is caught before it is committed. Every finding fails the test unless `ALLOWED` explains it; an
entry matches one exact value in one file (by the scanner's SHA-1 of the value) or one kind of line, so a
real secret added beside an allowed dummy is still found. (This file names two of the allowed values itself;
their lines carry detect-secrets' own inline exemption, `pragma: allowlist secret`, which is the other way to
exempt a line: the comment must sit on the line of the value.) A positive control plants a fake AWS key and a
private key, built at run time so this file holds neither, and requires the same scan to report them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from detect_secrets import SecretsCollection
from detect_secrets.settings import default_settings

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the scanned root
    line: int
    type: str  # the detect-secrets plugin's name, e.g. "AWS Access Key"
    value: str | None


@dataclass(frozen=True)
class Allowed:
    """A known false positive: in `path` (an fnmatch pattern: `*` crosses directories), the exact value
    `value`, or any value on a line matching `line`; and why it is no secret."""

    path: str
    reason: str
    value: str | None = None
    line: str | None = None

    def matches(self, finding: Finding) -> bool:
        if not fnmatch.fnmatch(finding.path, self.path):
            return False
        if self.value is not None:
            return finding.value == self.value
        lines = (ROOT / finding.path).read_text(errors="replace").splitlines()
        text = lines[finding.line - 1] if finding.line <= len(lines) else ""  # its YAML reader may miscount lines
        return self.line is not None and re.fullmatch(self.line, text) is not None


ALLOWED = (
    Allowed("bench/results/*.json", line=r'\s*"(commit|results_committed_in)": "[0-9a-f]{40}",?',
            reason="a git commit id recorded as a benchmark's provenance (bench/results_file.py): public"),
    Allowed("tests/notifykit.py", value="notifier",
            reason="the user (the scanner takes it for the password beside it) of the throwaway SMTP server the "
                   "notifier tests start on localhost"),
    Allowed("tests/test_clickhouse.py", value="secret",
            reason="a made-up URL whose user:password the settings parser must split; nothing listens there"),
    Allowed("tests/test_grafana_cli.py", value="pw", reason="a dummy password the Grafana CLI test pushes"),
    Allowed("tests/test_lake.py", value="testing", reason="moto's documented dummy credentials for its local S3"),
    Allowed("tests/test_notify.py", value="wrong", reason="the deliberately wrong SMTP password of a failure test"),
    Allowed("k8s/*.yaml", value="plantpulse-device-keys",
            reason="the name of the Kubernetes Secret the flow mounts (`secretName:`), not its content"),
    # issue 16, files in progress when this list was written:
    Allowed("plantpulse/device_signing.py",
            value="54e2f950928691f1c6ec13e7977ae21be6d3d3427aa2917f3ac1673c1119ec02",  # pragma: allowlist secret
            reason="the doctest's HMAC of a public test vector (secret bytes 0..31), not a key"),
    Allowed("tests/tlskit.py", value="client-key-passphrase",
            reason="the passphrase of a client key the TLS tests generate and throw away"),
    Allowed("tests/test_transport_tls.py", value="pw", reason="a dummy ClickHouse password the TLS tests set"),
    Allowed("tests/test_least_privilege.py", value="correct horse battery staple",
            reason="the password of the throwaway ClickHouse users the grant tests create"),
    Allowed("tests/test_least_privilege.py", value="short", reason="a too-short password the test must see refused"),
    Allowed("tests/test_least_privilege.py", value="00112233445566778899aabbccddeeff",  # pragma: allowlist secret
            reason="a made-up disk-encryption key for the test of the generated ClickHouse config"),
)


def repository_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (ROOT / name).is_file()})


def scan(root: Path, files: list[str]) -> list[Finding]:
    """detect-secrets findings, with their plain values (kept in memory, printed only as path:line: type)."""
    secrets = SecretsCollection(root=str(root))
    with default_settings():
        secrets.scan_files(*files, num_processors=min(4, os.cpu_count() or 1))
    return sorted((Finding(path, s.line_number, s.type, s.secret_value) for path, s in secrets),
                  key=lambda f: (f.path, f.line, f.type))


@pytest.fixture(scope="module")
def findings() -> list[Finding]:
    files = repository_files()
    assert len(files) > 100 and "README.md" in files  # the scan sees the repository, not an empty list
    return scan(ROOT, files)


def test_no_file_of_the_repository_holds_a_secret(findings: list[Finding]) -> None:
    unexplained = [f"{f.path}:{f.line}: {f.type}" for f in findings if not any(a.matches(f) for a in ALLOWED)]
    assert unexplained == [], "secrets (or new false positives: explain them in ALLOWED) found:\n" + "\n".join(
        unexplained)


def test_every_allowed_entry_is_still_needed(findings: list[Finding]) -> None:
    """An entry no finding needs any more is removed, so the list cannot quietly grow into a blanket pass."""
    assert [a for a in ALLOWED if not any(a.matches(f) for f in findings)] == []


def test_the_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """Positive control: the same scan, on a file holding an AWS key pair and a private key block, reports
    them (the values are assembled here so that this file itself holds none)."""
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"  # AWS's documented example key pair
    sk = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    begin = "-----BEGIN " + "RSA PRIVATE KEY-----"
    lines = ["AWS_ACCESS_KEY_ID=" + key_id, "aws_" + "secret_access_key = " + sk, begin, "MIIEow"]
    (tmp_path / "settings.env").write_text("\n".join(lines) + "\n")
    (tmp_path / "clean.py").write_text("x = 1\n")
    found = scan(tmp_path, ["settings.env", "clean.py"])
    assert {"AWS Access Key", "Private Key"} <= {f.type for f in found if f.path == "settings.env"}, found
    assert key_id in {f.value for f in found}
    assert not [f for f in found if f.path == "clean.py"]
    assert not [f for f in found if any(a.matches(f) for a in ALLOWED)]
