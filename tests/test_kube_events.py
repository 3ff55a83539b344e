"""Kubernetes and HAMi event texts, as the sentences a user sees while the server starts.

The FailedScheduling / FilteringFailed texts are those HAMi's scheduler and
kube-scheduler write (HAMi pkg/scheduler/score.go recordFilteringFailures,
scheduler.go Filter, pkg/device/common reason codes; kube-scheduler's
"0/N nodes are available: ..." summary, as quoted in HAMi's issues).
"""
from __future__ import annotations

import pytest

from hami_spawner.events import scheduling_sentence, translate, translate_progress


def event(reason: str, message: str, type_: str = "Normal") -> dict[str, object]:
    return {"reason": reason, "message": message, "type": type_,
            "involvedObject": {"kind": "Pod", "name": "jupyter-alice"},
            "metadata": {"uid": "u1"}, "lastTimestamp": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize("reason, message, sentence", [
    ("FailedScheduling",
     "0/2 nodes are available: 2 1/1 CardInsufficientMemory. preemption: 0/2 nodes are "
     "available: 2 No preemption victims found for incoming pod.",
     "Waiting for a GPU: no GPU has enough free memory for this slice."),
    ("FilteringFailed", "2 nodes CardInsufficientMemory(gpu-a,gpu-b)",
     "Waiting for a GPU: no GPU has enough free memory for this slice."),
    ("FilteringFailed", "1 nodes CardInsufficientCore(gpu-a)",
     "Waiting for a GPU: no GPU has enough unallocated compute share for this slice."),
    ("FilteringFailed", "3 nodes CardTypeMismatch(a,b,c)",
     "Waiting for a GPU: no free GPU is of the type this profile asks for."),
    ("FilteringFailed", "1 nodes NodeInsufficientDevice(gpu-a)",
     "Waiting for a GPU: no node has enough GPUs for this profile."),
    ("FilteringFailed", "1 nodes CardTimeSlicingExhausted(gpu-a)",
     "Waiting for a GPU: every GPU already holds as many slices as it may share."),
    ("FilteringFailed", "1 nodes ExclusiveDeviceAllocateConflict(gpu-a)",
     "Waiting for a GPU: a whole GPU is asked for, but every GPU is partly in use."),
    ("FilteringFailed", "no available node, 3 nodes do not meet",
     "Waiting for a GPU: none of the 3 GPU nodes can take this slice right now."),
    ("FailedScheduling", "0/4 nodes are available: 3 node unregistered. preemption: 0/4 nodes "
                         "are available: 4 No preemption victims found for incoming pod..",
     "Waiting for a GPU: the GPU scheduler knows no GPUs on the nodes"),
    ("FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
     "Waiting for a GPU: no node has enough GPUs for this profile."),
    ("FailedScheduling", "0/3 nodes are available: 1 Insufficient nvidia.com/gpumem, "
                         "2 Insufficient nvidia.com/gpucores.",
     "Waiting for a GPU: no GPU has enough free memory for this slice; no GPU has enough "
     "unallocated compute share for this slice."),
    ("FailedScheduling", "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had "
                         "untolerated taint {node-role.kubernetes.io/control-plane: }.",
     "Waiting for a GPU: no node has enough free CPU; no node matches where this server may run."),
    ("FailedScheduling", "0/1 nodes are available: 1 Insufficient memory.",
     "Waiting for a GPU: no node has enough free memory (RAM)."),
    ("FailedScheduling", "something new", "Waiting for a place to run"),
    ("FilteringSucceed", "find fit node(gpu-a), 1 nodes not fit, 1 nodes fit(gpu-a:1.50)",
     "Found a GPU for this slice on node gpu-a."),
    ("BindingSucceed", "Successfully binding node [gpu-a] to jhub/jupyter-alice",
     "GPU slice reserved on node gpu-a."),
    ("BindingFailed", "node gpu-a is locked", "could not be reserved"),
    ("Scheduled", "Successfully assigned jhub/jupyter-alice to gpu-a", "Placed on node gpu-a."),
    ("Pulling", 'Pulling image "quay.io/jupyter/pytorch-notebook:cuda12"',
     "Downloading the server image quay.io/jupyter/pytorch-notebook:cuda12"),
    ("Pulled", 'Container image "x" already present on machine', "The server image is ready."),
    ("Created", "Created container notebook", "The server container is created."),
    ("Started", "Started container notebook", "waiting for Jupyter to answer"),
    ("Failed", 'Failed to pull image "x": rpc error: ErrImagePull', "could not be downloaded"),
    ("BackOff", 'Back-off pulling image "x"', "Trying again to download the server image x."),
    ("BackOff", "Back-off restarting failed container notebook", "keeps stopping"),
    ("FailedMount", "MountVolume.SetUp failed", "storage volume"),
    ("UnexpectedAdmissionError", "Allocate failed due to device number not matched",
     "could not hand out the GPU slice"),
    ("TriggeredScaleUp", "pod triggered scale-up: [{gpu-pool 1->2}]", "Adding a node"),
])
def test_translation_table(reason: str, message: str, sentence: str) -> None:
    assert sentence in translate(event(reason, message))


def test_scheduling_sentence_names_each_reason_once_in_order() -> None:
    text = ("0/3 nodes are available: 1 1/1 CardInsufficientMemory, 2 2/2 CardTypeMismatch, "
            "1 1/1 CardInsufficientMemory.")
    sentence = scheduling_sentence(text)
    assert sentence.count("free memory") == 1
    assert sentence.index("type this profile") < sentence.index("free memory")


def test_unknown_events_pass_through_unchanged() -> None:
    progress = {"progress": 30, "message": "2026-01-01 [Normal] Something", "raw_event":
                event("SomethingElse", "Something")}
    assert translate_progress(progress) == progress
    assert translate_progress({"message": "patience"}) == {"message": "patience"}


def test_progress_event_keeps_the_raw_text_as_detail() -> None:
    raw = '2026-01-01T00:00:00Z [Warning] 0/1 nodes are available: 1 <CardTypeMismatch>.'
    out = translate_progress({"progress": 30, "message": raw, "raw_event":
                              event("FailedScheduling", raw.split("] ", 1)[1], "Warning")})
    assert out["message"].startswith("Waiting for a GPU: no free GPU is of the type")
    assert out["detail"] == raw and out["progress"] == 30
    assert "&lt;CardTypeMismatch&gt;" in out["html_message"] and "<details>" in out["html_message"]
    assert "raw_event" in out
