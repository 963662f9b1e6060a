"""Where steps run: the executor the deployment selects, the tags that send embedding and training steps
to GPU workers, and the pool that limits TMDb steps across an instance.

The same definitions serve every deployment; only ``GENRE_PIPELINE_EXECUTOR`` (and the instance's
dagster.yaml) differ: ``in_process`` (the embedded default), ``multiprocess``, ``celery`` (steps on
dagster-celery workers over a Redis or other broker) or ``k8s`` (one Kubernetes job per step).
"""

import os
from typing import Mapping

import dagster as dg

from genre_pipeline import settings

# The TMDb steps share one API quota: on a shared instance (PostgreSQL) the pool's limit, set in the
# instance's dagster.yaml, holds across every run and machine. The data folder's file lock still
# keeps two clients off one folder where the pool is not limited (the embedded default).
TMDB_POOL = "tmdb_api"

GPU_QUEUE = "gpu"

# Embedding and training steps: the Celery executor submits them to the gpu queue, which only GPU
# workers listen on; the Kubernetes executor gives their pod a GPU and the memory a model needs.
GPU_STEP_TAGS = {
    "dagster-celery/queue": GPU_QUEUE,
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    },
}

# Every other step's pod on Kubernetes (ingestion, cleaning, plots, the TF-IDF baseline, the comparison).
CPU_STEP_K8S_CONFIG = {
    "container_config": {"resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}
}


def build_executor(env: Mapping[str, str] = os.environ) -> dg.ExecutorDefinition:
    """The executor ``GENRE_PIPELINE_EXECUTOR`` names; its connection settings come from the environment
    at run time (``dg.EnvVar``-style config), so no URL or password is stored with a run."""
    name = settings.executor_name(env)
    if name == "in_process":
        # On a small machine a subprocess per step costs seconds each and buys no parallelism the TMDb
        # lock would allow anyway.
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "celery":
        from dagster_celery import celery_executor

        # The workers' own settings are in genre_pipeline/cluster/celery.yaml.
        return celery_executor.configured(
            {"broker": {"env": settings.CELERY_BROKER_ENV}, "backend": {"env": settings.CELERY_BACKEND_ENV}},
            name="celery",
        )
    from dagster_k8s import k8s_job_executor

    # The step image, namespace and env come from the run launcher (Helm values); this adds the
    # default pod size, which GPU_STEP_TAGS overrides for the steps that need a GPU.
    return k8s_job_executor.configured({"max_concurrent": 8, "step_k8s_config": CPU_STEP_K8S_CONFIG}, name="k8s")
