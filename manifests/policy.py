#!/usr/bin/env python3
# Writes manifests/policy.yaml: one ValidatingAdmissionPolicy and binding per workload
# kind, the same rules over each kind's spec fields (CEL is type-checked per kind, so a
# field list per kind). `--print` writes to stdout instead (the tests compare the two).
import sys
kinds = {
  "deployments": ["replicas", "selector", "strategy", "minReadySeconds", "revisionHistoryLimit", "paused", "progressDeadlineSeconds"],
  "statefulsets": ["replicas", "selector", "serviceName", "podManagementPolicy", "updateStrategy", "revisionHistoryLimit", "minReadySeconds", "volumeClaimTemplates", "persistentVolumeClaimRetentionPolicy", "ordinals"],
  "daemonsets": ["selector", "updateStrategy", "minReadySeconds", "revisionHistoryLimit"],
  "rollouts": ["replicas", "selector", "strategy", "minReadySeconds", "revisionHistoryLimit", "paused", "progressDeadlineSeconds", "progressDeadlineAbort", "restartAt", "workloadRef", "analysis", "rollbackWindow"],
}
groups = {"rollouts": ("argoproj.io", "v1alpha1")}
# Metadata annotations the API server itself writes on an update (before validation), so a
# restart changes them too: a DaemonSet's template generation counts template changes.
server_written = {"daemonsets": ["deprecated.daemonset.template.generation"]}
def same(path):
    o = f"object.{path}"; old = f"oldObject.{path}"
    parent, field = path.rsplit(".", 1)
    return f"(has(object.{path}) == has(oldObject.{path})) && (!has(object.{path}) || object.{path} == oldObject.{path})"
out = ["# Least privilege for the identities pod-reloaded grants (the checker account, or a pod's",
       "# own account bound to the checker ClusterRole). Every container of a pod shares its",
       "# token, so without this the app container could rewrite any workload in its namespace.",
       "# For those identities only, an update of a Deployment/StatefulSet/DaemonSet/Rollout may change",
       "# nothing but pod-reloaded's annotations: `kubectl.kubernetes.io/restartedAt` and",
       "# `pod-reloaded.io/*` on the pod template, `pod-reloaded.io/*` on the metadata, in the",
       "# workload's own namespace. The identities are the subjects of the RoleBindings the",
       "# webhook made (labelled app.kubernetes.io/managed-by=pod-reloaded), read as params:",
       "# a namespace without one has no such identity and the policy allows everything there.",
       "# People, controllers and every other account are never matched.",
       "# Argo Rollouts' Rollout too, when its CRD is installed (without it, that policy matches",
       "# nothing). Kubernetes >= 1.30 (admissionregistration.k8s.io/v1); see README, Security model."]
for resource, fields in kinds.items():
    name = f"pod-reloaded-checker-{resource}"
    ours = " || ".join(["k.startsWith('pod-reloaded.io/')"] + [f"k == '{a}'" for a in server_written.get(resource, [])])
    spec_checks = " &&\n        ".join(same(f"spec.{f}") for f in fields)
    out.append(f"""---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: {name}
spec:
  failurePolicy: Fail
  paramKind:
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
  matchConstraints:
    resourceRules:
      - apiGroups: ["{groups.get(resource, ("apps", "v1"))[0]}"]
        apiVersions: ["{groups.get(resource, ("apps", "v1"))[1]}"]
        operations: ["UPDATE"]
        resources: ["{resource}"]
  matchConditions:
    - name: service-accounts-only
      expression: "request.userInfo.username.startsWith('system:serviceaccount:')"
  variables:
    - name: granted
      expression: >-
        has(params.subjects) && params.subjects.exists(s, s.kind == 'ServiceAccount' &&
        request.userInfo.username == 'system:serviceaccount:' + s.namespace + ':' + s.name)
    - name: newTemplateAnnotations
      expression: "has(object.spec.template.metadata.annotations) ? object.spec.template.metadata.annotations : {{}}"
    - name: oldTemplateAnnotations
      expression: "has(oldObject.spec.template.metadata.annotations) ? oldObject.spec.template.metadata.annotations : {{}}"
    - name: newAnnotations
      expression: "has(object.metadata.annotations) ? object.metadata.annotations : {{}}"
    - name: oldAnnotations
      expression: "has(oldObject.metadata.annotations) ? oldObject.metadata.annotations : {{}}"
  validations:
    - expression: >-
        !variables.granted || params.subjects.exists(s, s.namespace == request.namespace &&
        request.userInfo.username == 'system:serviceaccount:' + s.namespace + ':' + s.name)
      message: "pod-reloaded's checker may only change workloads in its own namespace"
    - expression: >-
        !variables.granted || (
        object.spec.template.spec == oldObject.spec.template.spec &&
        {same("spec.template.metadata.labels")} &&
        {spec_checks})
      message: "pod-reloaded's checker may change only its annotations on the pod template, not the spec"
    - expression: >-
        !variables.granted || (
        variables.newTemplateAnnotations.all(k, k.startsWith('pod-reloaded.io/') || k == 'kubectl.kubernetes.io/restartedAt' ||
        (k in variables.oldTemplateAnnotations && variables.oldTemplateAnnotations[k] == variables.newTemplateAnnotations[k])) &&
        variables.oldTemplateAnnotations.all(k, k.startsWith('pod-reloaded.io/') || k == 'kubectl.kubernetes.io/restartedAt' ||
        k in variables.newTemplateAnnotations))
      message: "pod-reloaded's checker may change only kubectl.kubernetes.io/restartedAt and pod-reloaded.io/* annotations on the pod template"
    - expression: >-
        !variables.granted || (
        {same("metadata.labels")} &&
        {same("metadata.ownerReferences")} &&
        {same("metadata.finalizers")} &&
        variables.newAnnotations.all(k, {ours} ||
        (k in variables.oldAnnotations && variables.oldAnnotations[k] == variables.newAnnotations[k])) &&
        variables.oldAnnotations.all(k, {ours} || k in variables.newAnnotations))
      message: "pod-reloaded's checker may change only pod-reloaded.io/* annotations on the workload's metadata"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: {name}
spec:
  policyName: {name}
  validationActions: ["Deny"]
  paramRef:
    selector:
      matchLabels:
        app.kubernetes.io/managed-by: pod-reloaded
    parameterNotFoundAction: Allow""")
text = "\n".join(out) + "\n"
if "--print" in sys.argv:
    sys.stdout.write(text)
else:
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    # The kustomize base and the Helm chart ship the same policy.
    for path in [os.path.join(here, "policy.yaml"),
                 os.path.join(here, "..", "charts", "pod-reloaded", "files", "policy.yaml")]:
        with open(path, "w") as f:
            f.write(text)
