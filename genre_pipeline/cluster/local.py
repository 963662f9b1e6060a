"""A real local deployment on 127.0.0.1 (``genre-pipeline cluster up/down``, ``make cluster``): PostgreSQL
and Redis from the Debian packages, Dagster's daemon and webserver on a PostgreSQL instance, and
dagster-celery workers that execute every step. The same definitions as the embedded default; only the
environment written to ``<root>/cluster.env`` differs.

Everything lives under one root folder: ``postgres/`` (the database cluster), ``redis/``,
``dagster_home/`` (the instance's dagster.yaml), ``shared/data`` (the data folder every worker reads and
writes: the stand-in for a shared filesystem), ``logs/`` and ``pids/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path

from genre_pipeline import settings
from genre_pipeline.cluster.databases import (
    DAGSTER_DB,
    DB_USER,
    MLFLOW_DB,
    ClusterError,
    redis_argv,
    run_program,
    start_postgres,
    stop_postgres,
)

DEFAULT_ROOT = Path(".cluster")
WORKER_QUEUES = ("dagster", "gpu")  # on this machine every worker stands in for a GPU worker too
LOCATION_NAME = "genre_pipeline"
POSTGRES_URL_ENV = "DAGSTER_POSTGRES_URL"  # read by the instance's dagster.yaml
SOURCE_VARIABLES = (settings.SNAPSHOT_ENV, settings.YEARS_ENV)


@dataclasses.dataclass(frozen=True)
class Ports:
    postgres: int = 55432
    redis: int = 56379
    webserver: int = 3070


@dataclasses.dataclass(frozen=True)
class ClusterLayout:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "ClusterLayout":
        return cls(Path(root).expanduser().resolve())

    postgres_dir = property(lambda self: self.root / "postgres")
    postgres_data = property(lambda self: self.root / "postgres" / "data")
    redis_dir = property(lambda self: self.root / "redis")
    dagster_home = property(lambda self: self.root / "dagster_home")
    data_dir = property(lambda self: self.root / "shared" / "data")
    logs_dir = property(lambda self: self.root / "logs")
    pids_dir = property(lambda self: self.root / "pids")
    env_file = property(lambda self: self.root / "cluster.env")
    celery_config = property(lambda self: self.root / "celery.yaml")
    workspace_file = property(lambda self: self.root / "workspace.yaml")

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"


def worker_name(number: int) -> str:
    return f"worker-{number}"


# --- processes -------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # an exited child nobody has reaped yet is not running


def _start(layout: ClusterLayout, name: str, argv: list[str], env: dict[str, str]) -> int:
    """A service in its own session (so ``down`` stops it with everything it forked), logging to logs/."""
    with open(layout.log_file(name), "ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=layout.root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (layout.pids_dir / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def running_services(layout: ClusterLayout) -> dict[str, int]:
    """The started services whose process is still running, by name."""
    if not layout.pids_dir.is_dir():
        return {}
    pids = {path.stem: int(path.read_text()) for path in sorted(layout.pids_dir.glob("*.pid"))}
    return {name: pid for name, pid in pids.items() if _alive(pid)}


def stop_service(layout: ClusterLayout, name: str, *, timeout_s: float = 30.0) -> bool:
    """SIGTERM to the service's process group, SIGKILL after ``timeout_s``; False if it was not running."""
    pid_file = layout.pids_dir / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    was_running = _alive(pid)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if not _alive(pid):
            break
    _reap(pid)
    pid_file.unlink()
    return was_running


def _processes_of_instance(dagster_home: Path) -> list[int]:
    """The running Dagster code servers and run workers (``dagster api ...``) started for this instance
    (``DAGSTER_HOME`` in their environment); never a user's shell or tool that sourced cluster.env."""
    marker = f"DAGSTER_HOME={dagster_home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if b"dagster\0api\0" in command and marker in variables and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent reaps it


# --- the deployment ---------------------------------------------------------------------------------


def cluster_environment(layout: ClusterLayout, ports: Ports, password: str, data_dir: Path) -> dict[str, str]:
    """What makes a process part of this deployment: the instance, the executor and its broker, MLflow's
    store, the shared data folder. Passwords only in PGPASSWORD, never in a URL that reports show."""
    # The driver named: SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; Dagster installs psycopg2.
    database = f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{ports.postgres}"
    return {
        "DAGSTER_HOME": str(layout.dagster_home),
        POSTGRES_URL_ENV: f"{database}/{DAGSTER_DB}",
        "PGPASSWORD": password,
        settings.TRACKING_URI_ENV: f"{database}/{MLFLOW_DB}",
        "MLFLOW_TRACKING_URI": f"{database}/{MLFLOW_DB}",  # for MLflow's own commands in a sourced shell
        settings.EXECUTOR_ENV: "celery",
        settings.CELERY_BROKER_ENV: f"redis://127.0.0.1:{ports.redis}/0",
        settings.CELERY_BACKEND_ENV: f"redis://127.0.0.1:{ports.redis}/1",
        settings.DATA_DIR_ENV: str(data_dir),
        "DAGSTER_WEBSERVER_URL": f"http://127.0.0.1:{ports.webserver}",
    }


def read_environment(layout: ClusterLayout) -> dict[str, str]:
    if not layout.env_file.exists():
        raise ClusterError(f"no cluster at {layout.root}: start one with `genre-pipeline cluster up`")
    lines = layout.env_file.read_text().splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export "))


def process_environment(layout: ClusterLayout) -> dict[str, str]:
    """This process's environment joined with the cluster's: what every service and client runs with."""
    bin_dir = str(Path(sys.executable).parent)  # celery, dagster-daemon, ... of this installation
    return {**os.environ, **read_environment(layout), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _write_files(layout: ClusterLayout, environment: dict[str, str]) -> None:
    for folder in (layout.dagster_home, layout.logs_dir, layout.pids_dir, Path(environment[settings.DATA_DIR_ENV])):
        folder.mkdir(parents=True, exist_ok=True)
    templates = resources.files("genre_pipeline.cluster")
    (layout.dagster_home / "dagster.yaml").write_text(templates.joinpath("dagster.yaml").read_text())
    layout.celery_config.write_text(templates.joinpath("celery.yaml").read_text())
    layout.workspace_file.write_text(
        "load_from:\n  - python_module:\n      module_name: genre_pipeline.definitions\n"
        f"      location_name: {LOCATION_NAME}\n"
    )
    old_umask = os.umask(0o077)  # the file holds the database password
    try:
        layout.env_file.write_text("".join(f"export {key}={value}\n" for key, value in environment.items()))
    finally:
        os.umask(old_umask)


def start_worker(layout: ClusterLayout, number: int, queues=WORKER_QUEUES) -> int:
    """One dagster-celery worker that runs one step at a time, listening on ``queues``."""
    bin_dir = Path(sys.executable).parent
    argv = [
        str(bin_dir / "dagster-celery"),
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-y",
        str(layout.celery_config),
        "-n",
        worker_name(number),
        "-q",
        ",".join(queues),
    ]
    # One -q with a comma-separated list: Celery keeps only the last of several -Q.
    return _start(layout, worker_name(number), [*argv, "--", "--concurrency=1"], process_environment(layout))


def up(
    root: str | Path = DEFAULT_ROOT,
    *,
    workers: int = 2,
    ports: Ports | None = None,
    data_dir: str | Path | None = None,
    timeout_s: float = 180.0,
) -> ClusterLayout:
    """Start PostgreSQL, Redis, ``workers`` Celery workers, the Dagster daemon and webserver; return once
    the webserver answers and every worker replies to a ping."""
    layout, ports = ClusterLayout.at(root), ports or Ports()
    if running_services(layout):
        raise ClusterError(f"a cluster is running at {layout.root}: `genre-pipeline cluster down` first")
    for name, port in dataclasses.asdict(ports).items():
        if not port_free(port):
            raise ClusterError(f"port {port} ({name}) is taken on 127.0.0.1: pick another with --{name}-port")
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o755)  # the postgres user enters it to reach its data folder
    # The database keeps the password it was created with: a restarted cluster reuses it.
    previous = read_environment(layout) if layout.env_file.exists() else {}
    password = previous.get("PGPASSWORD") or secrets.token_urlsafe(24)
    data = Path(data_dir).expanduser().resolve() if data_dir else layout.data_dir
    environment = cluster_environment(layout, ports, password, data)
    # The source is the code location's, fixed when it loads: recorded so clients see the same years.
    environment.update({name: os.environ[name] for name in SOURCE_VARIABLES if os.environ.get(name)})
    _write_files(layout, environment)
    env = process_environment(layout)
    try:
        start_postgres(layout.postgres_dir, ports.postgres, password)
        _start(layout, "redis", redis_argv(layout.redis_dir, ports.redis), env)
        bin_dir = Path(sys.executable).parent
        # The instance's tables, made once before the services start: each would otherwise create
        # them at the same moment on a fresh database, and all but one would fail.
        run_program(
            [str(bin_dir / "dagster"), "instance", "migrate"], "creating the Dagster instance's tables", env=env
        )
        for number in range(1, workers + 1):
            start_worker(layout, number)
        workspace = ["-w", str(layout.workspace_file)]
        _start(layout, "daemon", [str(bin_dir / "dagster-daemon"), "run", *workspace], env)
        _start(
            layout,
            "webserver",
            [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(ports.webserver), *workspace],
            env,
        )
        _wait_until_ready(layout, env, ports, workers, timeout_s)
    except BaseException:
        down(layout.root)
        raise
    return layout


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _wait_until_ready(layout: ClusterLayout, env: dict, ports: Ports, workers: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = {"webserver", *(worker_name(n) for n in range(1, workers + 1))}
    while pending:
        stopped = {"redis", "daemon", *pending} - set(running_services(layout))
        if stopped:
            name = sorted(stopped)[0]
            raise ClusterError(f"{name} stopped while starting; its log: {layout.log_file(name)}")
        if "webserver" in pending and _answers(f"http://127.0.0.1:{ports.webserver}/server_info"):
            pending.discard("webserver")
        pending -= {name.split("@")[0] for name in ping_workers(env)}
        if time.monotonic() > deadline:
            raise ClusterError(
                f"not ready after {timeout_s:.0f} s: {', '.join(sorted(pending))} (logs in {layout.logs_dir})"
            )
        time.sleep(1.0)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ping_workers(env: dict[str, str], timeout_s: float = 1.0) -> list[str]:
    """The names of the Celery workers that answer on the cluster's broker."""
    from celery import Celery
    from kombu.exceptions import OperationalError

    app = Celery("genre-pipeline-ping", broker=env[settings.CELERY_BROKER_ENV])
    try:
        return sorted(name for reply in app.control.ping(timeout=timeout_s) or [] for name in reply)
    except (OperationalError, OSError):  # the broker is not up (yet)
        return []
    finally:
        app.close()


def down(root: str | Path = DEFAULT_ROOT) -> list[str]:
    """Stop every service of the cluster at ``root`` (the webserver and daemon first, PostgreSQL last);
    the data, the database and the logs stay for the next ``up``. Returns what was running."""
    layout = ClusterLayout.at(root)
    stopped = []
    names = [path.stem for path in sorted(layout.pids_dir.glob("*.pid"))] if layout.pids_dir.is_dir() else []
    order = {"webserver": 0, "daemon": 1, "redis": 3}
    for name in sorted(names, key=lambda n: order.get(n, 2)):
        if stop_service(layout, name):
            stopped.append(name)
    # Code servers and run workers start sessions of their own, out of their service's process group:
    # found by the instance they were started for.
    for pid in _processes_of_instance(layout.dagster_home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if stop_postgres(layout.postgres_dir):
        stopped.append("postgres")
    return stopped
