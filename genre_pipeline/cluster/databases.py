"""PostgreSQL and Redis from the Debian packages for the local cluster: PostgreSQL's cluster with the
Dagster and MLflow databases, started and stopped with its own programs, and Redis as the Celery broker."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

DB_USER = "genre"
DAGSTER_DB, MLFLOW_DB = "dagster", "mlflow"


class ClusterError(RuntimeError):
    """The local cluster cannot start or is not in the state asked for; the message says what to do."""


def run_program(argv: list[str], what: str, **kwargs) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise ClusterError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result.stdout


def postgres_program(name: str) -> str:
    """A PostgreSQL server program; Debian keeps them in /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    program = found[-1] if found else shutil.which(name)
    if not program:
        raise ClusterError(f"PostgreSQL's {name} is not installed: apt-get install postgresql")
    return program


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as root, its programs run as the postgres user.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres(postgres_dir: Path, port: int, password: str) -> None:
    """PostgreSQL's cluster in ``postgres_dir`` (created the first time), started, with the two databases."""
    postgres_data = postgres_dir / "data"
    postgres_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(postgres_dir, "postgres", "postgres")
        reach = subprocess.run(_as_postgres_user(["test", "-w", str(postgres_dir)]))
        if reach.returncode != 0:
            raise ClusterError(
                f"PostgreSQL runs as the postgres user, which cannot reach {postgres_dir}: "
                "choose a cluster root under a folder every user may enter (e.g. /var/tmp/genre-cluster)"
            )
    if not (postgres_data / "PG_VERSION").exists():
        password_file = postgres_dir / "initial-password"
        password_file.write_text(password)
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        try:
            run_program(
                _as_postgres_user(
                    [
                        postgres_program("initdb"),
                        "-D",
                        str(postgres_data),
                        "-U",
                        DB_USER,
                        "--auth=scram-sha-256",
                        f"--pwfile={password_file}",
                        "-E",
                        "UTF8",
                        "--no-locale",
                    ]
                ),
                "initdb",
            )
        finally:
            password_file.unlink()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={postgres_dir}"
    run_program(
        _as_postgres_user(
            [
                postgres_program("pg_ctl"),
                "-D",
                str(postgres_data),
                "-l",
                str(postgres_dir / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        f"starting PostgreSQL (log: {postgres_dir / 'postgres.log'})",
    )
    env = {**os.environ, "PGPASSWORD": password}
    existing = run_program(
        [
            postgres_program("psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            DB_USER,
            "-d",
            "postgres",
            "-Atc",
            "SELECT datname FROM pg_database",
        ],
        "listing databases",
        env=env,
    ).split()
    for database in (DAGSTER_DB, MLFLOW_DB):
        if database not in existing:
            run_program(
                [postgres_program("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, database],
                f"creating database {database}",
                env=env,
            )


def stop_postgres(postgres_dir: Path) -> bool:
    postgres_data = postgres_dir / "data"
    if not (postgres_data / "postmaster.pid").exists():
        return False
    run_program(
        _as_postgres_user([postgres_program("pg_ctl"), "-D", str(postgres_data), "-m", "fast", "-w", "stop"]),
        "stopping PostgreSQL",
    )
    return True


def redis_argv(redis_dir: Path, port: int) -> list[str]:
    program = shutil.which("redis-server")
    if not program:
        raise ClusterError("redis-server is not installed: apt-get install redis-server")
    redis_dir.mkdir(parents=True, exist_ok=True)
    # Only a broker: queued steps need not survive a Redis restart (Dagster's state is in PostgreSQL).
    return [
        program,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(redis_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
