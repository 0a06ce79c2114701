#!/usr/bin/env python3
"""A tiny hostPath volume provisioner for the single-node local cluster.

Runs on the host (started by up.sh) and polls the API with kubectl:

* a PersistentVolumeClaim of a StorageClass whose provisioner is PROVISIONER,
  still Pending, gets a hostPath PersistentVolume under ROOT, pre-bound to it
  (with WaitForFirstConsumer it waits until the scheduler has picked the node);
* a Released PersistentVolume of ours with reclaim policy Delete is deleted,
  with its directory.

Standard library only; the node is the machine itself, so a directory on the
host is the node's disk.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

PROVISIONER = "shardset.local/hostpath"


def kubectl(*args: str, stdin: str | None = None) -> str:
    r = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def reconcile(root: str, node: str) -> None:
    classes = {
        c["metadata"]["name"]: c
        for c in json.loads(kubectl("get", "storageclass", "-o", "json"))["items"]
        if c.get("provisioner") == PROVISIONER
    }
    if not classes:
        return
    pvcs = json.loads(kubectl("get", "pvc", "-A", "-o", "json"))["items"]
    for pvc in pvcs:
        meta, spec = pvc["metadata"], pvc["spec"]
        sc = classes.get(spec.get("storageClassName") or "")
        if sc is None or pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
            continue
        if meta.get("deletionTimestamp"):
            continue
        ann = meta.get("annotations", {})
        if (
            sc.get("volumeBindingMode") == "WaitForFirstConsumer"
            and "volume.kubernetes.io/selected-node" not in ann
        ):
            continue
        name = f"pvc-{meta['uid']}"
        path = os.path.join(root, f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)  # pods run as any uid; hostPath has no fsGroup support
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                "labels": {"shardset.local/provisioner": "hostpath"},
            },
            "spec": {
                "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                "accessModes": spec.get("accessModes", ["ReadWriteOnce"]),
                "persistentVolumeReclaimPolicy": sc.get("reclaimPolicy", "Delete"),
                "storageClassName": sc["metadata"]["name"],
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/hostname",
                                        "operator": "In",
                                        "values": [node],
                                    }
                                ]
                            }
                        ]
                    }
                },
            },
        }
        try:
            kubectl("create", "-f", "-", stdin=json.dumps(pv))
            log(f"provisioned {name} at {path} for {meta['namespace']}/{meta['name']}")
        except RuntimeError as e:
            if "AlreadyExists" not in str(e):
                log(f"error: {e}")
    pvs = json.loads(
        kubectl("get", "pv", "-l", "shardset.local/provisioner=hostpath", "-o", "json")
    )["items"]
    for pv in pvs:
        spec = pv["spec"]
        if (
            pv.get("status", {}).get("phase") != "Released"
            or spec.get("persistentVolumeReclaimPolicy") != "Delete"
        ):
            continue
        path = spec["hostPath"]["path"]
        if os.path.dirname(path) == root.rstrip("/"):
            shutil.rmtree(path, ignore_errors=True)
        kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false")
        log(f"deleted {pv['metadata']['name']} and {path}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="directory that holds the volumes")
    ap.add_argument("--node", required=True, help="node name for the volumes' node affinity")
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    log(f"hostpath provisioner {PROVISIONER}: volumes under {a.root}")
    while True:
        try:
            reconcile(a.root, a.node)
        except Exception as e:  # keep going: the API may be restarting
            log(f"error: {e}")
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
