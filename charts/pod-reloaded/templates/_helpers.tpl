{{- define "pod-reloaded.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}
{{- define "pod-reloaded.selector" -}}
app.kubernetes.io/name: pod-reloaded-webhook
{{- end -}}
{{- /* The serving certificate's DNS names: the Service's. */ -}}
{{- define "pod-reloaded.dnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- list (printf "pod-reloaded-webhook.%s.svc" $ns) (printf "pod-reloaded-webhook.%s.svc.cluster.local" $ns) (printf "pod-reloaded-webhook.%s" $ns) "pod-reloaded-webhook" | toJson -}}
{{- end -}}
{{- /* The generated TLS material: the Secret already in the cluster when there is one
(an upgrade must not change a working certificate), else a new CA and certificate.
Computed once per render and kept in .Values so the Secret and the caBundle agree. */ -}}
{{- define "pod-reloaded.generated" -}}
{{- if not (hasKey .Values "_generated") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace "pod-reloaded-webhook-tls" -}}
{{- if and $existing (index ($existing.data | default dict) "ca.crt") -}}
{{- $_ := set .Values "_generated" (dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt")) -}}
{{- else -}}
{{- $ca := genCA "pod-reloaded webhook CA" (int .Values.certificate.days) -}}
{{- $cert := genSignedCert "pod-reloaded-webhook" nil (include "pod-reloaded.dnsNames" . | fromJsonArray) (int .Values.certificate.days) $ca -}}
{{- $_ := set .Values "_generated" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- define "pod-reloaded.caBundle" -}}
{{- if eq .Values.certificate.source "generate" -}}
{{- include "pod-reloaded.generated" . -}}
{{- index .Values._generated "ca" -}}
{{- else if eq .Values.certificate.source "external" -}}
{{- .Values.certificate.caBundle -}}
{{- end -}}
{{- end -}}
