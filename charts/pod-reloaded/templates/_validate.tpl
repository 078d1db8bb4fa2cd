{{- /*
What values.schema.json cannot say about `config`: bounds and the rules between two keys.
The webhook checks the same at start (contract/src/settings.rs, webhook/src/config.rs),
so a value refused there fails the render here instead of crash-looping the webhook's
pods; tests/tests/chart.rs sends one table of values through both and compares.
*/ -}}

{{- /* A duration as the webhook reads it (`1h30m`, `1.5s`), in nanoseconds. */ -}}
{{- define "pod-reloaded.nanoseconds" -}}
{{- $units := dict "nsec" 1.0 "ns" 1.0 "usec" 1e3 "us" 1e3 "msec" 1e6 "ms" 1e6 "seconds" 1e9 "second" 1e9 "sec" 1e9 "s" 1e9 "minutes" 60e9 "minute" 60e9 "min" 60e9 "m" 60e9 "hours" 3600e9 "hour" 3600e9 "hr" 3600e9 "h" 3600e9 "days" 86400e9 "day" 86400e9 "d" 86400e9 "weeks" 604800e9 "week" 604800e9 "w" 604800e9 -}}
{{- $total := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?\\s*[a-z]+" . -1 -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . -}}
{{- $unit := trimPrefix $number . | trim -}}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{- /* A Kubernetes quantity (`100m`, `16Mi`, `2e3`) as a number. */ -}}
{{- define "pod-reloaded.quantity" -}}
{{- $number := regexFind "^\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" . -}}
{{- $suffix := trimPrefix $number . -}}
{{- $value := float64 (trimPrefix "+" $number) -}}
{{- $suffixes := dict "" 1.0 "n" 1e-9 "u" 1e-6 "m" 1e-3 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- if hasKey $suffixes $suffix -}}
{{- mulf $value (get $suffixes $suffix) -}}
{{- else -}}
{{- $exponent := int (trimPrefix "+" (substr 1 (len $suffix) $suffix)) -}}
{{- range until (int (max $exponent (sub 0 $exponent))) -}}
{{- if gt $exponent 0 -}}{{- $value = mulf $value 10 -}}{{- else -}}{{- $value = divf $value 10 -}}{{- end -}}
{{- end -}}
{{- $value -}}
{{- end -}}
{{- end -}}

{{- define "pod-reloaded.validateConfig" -}}
{{- $config := .Values.config -}}
{{- /* key: [minimum, maximum, why] in nanoseconds, as the webhook bounds them. */ -}}
{{- $bounds := dict
  "default-interval" (list 1e9 86400e9 "from 1s to 24h: shorter would hammer registries")
  "tls-reload-interval" (list 1e8 3600e9 "from 100ms to 1h: a renewed certificate is picked up within it")
  "api-timeout" (list 1e8 4e9 "from 100ms to 4s: the API server gives the whole webhook call 5s")
  "shutdown-delay" (list 0.0 120e9 "at most 2m: a pod is killed after its termination grace period")
  "sidecar-registry-timeout" (list 1e8 600e9 "from 100ms to 10m") -}}
{{- range $key, $bound := $bounds -}}
{{- if hasKey $config $key -}}
{{- $nanoseconds := include "pod-reloaded.nanoseconds" (toString (get $config $key)) | float64 -}}
{{- if or (lt $nanoseconds (index $bound 0)) (gt $nanoseconds (index $bound 1)) -}}
{{- fail (printf "config.%s=%v: must be %s" $key (get $config $key) (index $bound 2)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* The webhook's defaults where a key is not set. */ -}}
{{- $defaults := dict "sidecar-cpu-request" "5m" "sidecar-cpu-limit" "100m" "sidecar-memory-request" "10Mi" "sidecar-memory-limit" "32Mi" -}}
{{- $quantities := dict -}}
{{- range $key, $default := $defaults -}}
{{- $_ := set $quantities $key (include "pod-reloaded.quantity" (toString (get $config $key | default $default)) | float64) -}}
{{- end -}}
{{- if lt (get $quantities "sidecar-memory-limit") 4194304.0 -}}
{{- fail (printf "config.sidecar-memory-limit=%v: below 4Mi the sidecar would be killed for memory at once" (get $config "sidecar-memory-limit")) -}}
{{- end -}}
{{- range $resource := list "cpu" "memory" -}}
{{- $request := printf "sidecar-%s-request" $resource -}}
{{- $limit := printf "sidecar-%s-limit" $resource -}}
{{- if gt (get $quantities $request) (get $quantities $limit) -}}
{{- fail (printf "config.%s (%v) is more than config.%s (%v): the API server would refuse every injected pod" $request (get $config $request | default (get $defaults $request)) $limit (get $config $limit | default (get $defaults $limit))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
