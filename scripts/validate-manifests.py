#!/usr/bin/env python3
"""Validates Kubernetes manifests offline (no API server can run here).

usage: validate-manifests.py CRD.yaml FILE.yaml...

- Custom resources of the CRD's kind are checked against its openAPIV3Schema with the
  `jsonschema` package. Unknown fields are errors (as `kubectl apply --validate=strict` makes
  them): every object schema without `additionalProperties` or
  `x-kubernetes-preserve-unknown-fields` is closed.
- Every other document (built-in kinds: the CRD itself, PersistentVolumes, claims, pods...)
  goes through `kubernetes-validate` in strict mode, for the Kubernetes version below.

Prints one line per document and exits 1 if any is invalid, 3 if a package is missing.
"""

import copy
import sys

KUBERNETES_VERSION = "1.33.0"
PIP = "python3 -m pip install --quiet jsonschema==4.26.0 kubernetes-validate==1.37.0"

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:
    print(f"missing Python package ({e.name}); install them with:\n  {PIP}", file=sys.stderr)
    sys.exit(3)


def closed(schema):
    """The schema with unknown properties refused, as strict validation does."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if s.get("type") == "object" and "properties" in s:
            if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
                s["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for sub in s.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties", "not"):
            walk(s.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(key, []):
                walk(sub)

    walk(schema)
    return schema


def schemas(crd):
    """(apiVersion, kind) -> a validator of the whole object, for each version of the CRD."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    out = {}
    for version in crd["spec"]["versions"]:
        schema = closed(version["schema"]["openAPIV3Schema"])
        # apiVersion, kind and metadata are the API server's to check, not the CRD's.
        schema.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
        out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        crds = [d for d in yaml.safe_load_all(f) if d]
    custom = {}
    for crd in crds:
        custom.update(schemas(crd))
    failures = 0
    for path in argv[1:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"FAIL {path}: no document")
            failures += 1
        for i, doc in enumerate(docs):
            what = f"{path}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            validator = custom.get((doc.get("apiVersion"), doc.get("kind")))
            if validator is not None:
                errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
                problems = [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors]
            else:
                try:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                    problems = []
                except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                    problems = [str(getattr(e, "message", e))]
            if problems:
                failures += 1
                print(f"FAIL {what}")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"ok   {what}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
