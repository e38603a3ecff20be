"""Renders a kustomization with the subset of kustomize that deploy/k8s uses, so the manifests
can be validated where neither kustomize nor kubectl is installed. Anything outside the subset
is an error, not silently ignored; where kubectl is installed a test checks this renderer against
`kubectl kustomize`."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "namePrefix", "nameSuffix", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "APIService"}


class KustomizeError(ValueError):
    pass


def render(directory: Path) -> list[dict]:
    directory = Path(directory)
    source = directory / "kustomization.yaml"
    spec = yaml.safe_load(source.read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{source}: fields outside the supported subset: {sorted(unknown)}")
    docs: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    # kustomize's order: patches, namespace, name prefix/suffix, images.
    for patch in spec.get("patches", []):
        apply_patch(docs, patch, source)
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    if "namePrefix" in spec or "nameSuffix" in spec:
        for doc in docs:
            doc["metadata"]["name"] = spec.get("namePrefix", "") + doc["metadata"]["name"] + spec.get("nameSuffix", "")
    for image in spec.get("images", []):
        set_image(docs, image)
    return docs


def apply_patch(docs: list[dict], patch: dict, source: Path) -> None:
    if set(patch) - {"target", "patch"}:
        raise KustomizeError(f"{source}: only inline JSON 6902 patches with a target are supported: {patch}")
    target = patch["target"]
    matched = [d for d in docs if all(d.get("metadata", {}).get("name") == v if k == "name" else d.get(k) == v
                                      for k, v in target.items())]
    if not matched:
        raise KustomizeError(f"{source}: patch target {target} matches no resource")
    for doc in matched:
        for op in yaml.safe_load(patch["patch"]):
            apply_operation(doc, op)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_operation(doc: dict, op: dict) -> None:
    *parents, last = _pointer(op["path"])
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    kind = op["op"]
    if kind in ("add", "replace"):
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif kind == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            if kind == "replace" and last not in node:
                raise KustomizeError(f"replace of a missing path {op['path']}")
            node[last] = value
    elif kind == "remove":
        del node[int(last) if isinstance(node, list) else last]
    else:
        raise KustomizeError(f"unsupported patch operation {kind!r}")


def set_image(docs: list[dict], image: dict) -> None:
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
