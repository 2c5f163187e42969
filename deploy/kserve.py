"""The KServe form: Triton as an InferenceService (model format ``triton``) instead of a Deployment.

For teams that already run KServe. The predictor runs this project's Triton image (the Python backend's
dependencies) under KServe's Triton runtime, reads the model volume through a ``pvc://`` storage URI,
and runs in explicit model-control mode, so the rollout controller still loads exactly the champion
and the canary. The split, the analysis and the rollback stay with the gateways and the controller:
KServe's own ``canaryTrafficPercent`` moves traffic between two predictor revisions, but nothing rolls
it back when the canary's errors or latency grow.
"""

from __future__ import annotations

from deploy.objects import MODELS_CLAIM, SERVICE_ACCOUNT, Manifest, container_security, labels, pod_security, resources
from deploy.settings import DeploySettings

#: The HTTP and gRPC ports of KServe's Triton runtime (kserve-tritonserver); the predictor Service maps 80 to HTTP.
KSERVE_TRITON_HTTP_PORT = 8080
KSERVE_TRITON_GRPC_PORT = 9000


def predictor_pods(s: DeploySettings) -> dict[str, str]:
    """Labels KServe puts on the predictor's pods."""
    return {"serving.kserve.io/inferenceservice": s.kserve.name}


def predictor_url(s: DeploySettings) -> str:
    # RawDeployment: a plain Service named <name>-predictor, port 80 to the runtime's HTTP port.
    return f"http://{s.kserve.name}-predictor.{s.namespace}.svc"


def inference_service(s: DeploySettings) -> Manifest:
    mount = s.kserve.pvc_mount_path
    model = {
        "modelFormat": {"name": "triton"},
        "runtime": s.kserve.runtime,
        # The whole volume: the repository links into the version cache next to it.
        "storageUri": f"pvc://{MODELS_CLAIM}",
        # The runtime's image has no transformers; this project's Triton image has the backend's stack.
        "image": s.images.triton,
        # Added to the runtime's own arguments: the repository the controller writes, explicit control.
        "args": [
            f"--model-repository={mount}/repository",
            "--model-control-mode=explicit",
            "--disable-auto-complete-config",
        ],
        "resources": resources(s.triton.resources, **{"nvidia.com/gpu": s.triton.gpus}),
        "securityContext": container_security(read_only_root=False),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": s.kserve.name,
            "namespace": s.namespace,
            "labels": labels("triton"),
            # A plain Deployment and Service: Knative's scale-to-zero and revisions would drop the
            # versions the controller loaded; one predictor, as with the Triton Deployment.
            "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"},
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 1,
                "serviceAccountName": SERVICE_ACCOUNT,
                "securityContext": pod_security(),
                "nodeSelector": dict(s.triton.node_selector),
                "tolerations": [dict(t) for t in s.triton.tolerations],
                # The Python backend's tensors go through shared memory (the default 64 MB is too small).
                "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.triton.shm_size}}],
                "model": model,
            }
        },
    }
