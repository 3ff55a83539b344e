{{/*
What values.schema.json cannot say (it sees one value at a time): refused at render time
with one sentence naming the value to fix.
*/}}
{{- define "hami-jupyterhub.checks" -}}
{{- $gpu := .Values.gpu -}}
{{- $seen := dict -}}
{{- range $gpu.profiles -}}
{{- if eq .name "custom" -}}
{{- fail "hami-jupyterhub: gpu.profiles: the name \"custom\" is reserved for the custom size (gpu.custom); rename the profile" -}}
{{- end -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "hami-jupyterhub: gpu.profiles: the name %q is used by two profiles; names must be unique" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- if and $gpu.cpuProfile.name (hasKey $seen $gpu.cpuProfile.name) -}}
{{- fail (printf "hami-jupyterhub: gpu.profiles: %q is the name of the CPU-only choice (gpu.cpuProfile.name); rename the profile" $gpu.cpuProfile.name) -}}
{{- end -}}
{{- $hub := .Values.jupyterhub.hub -}}
{{- if not (hasKey ($hub.extraConfig | default dict) "00-hami-jupyter") -}}
{{- fail "hami-jupyterhub: jupyterhub.hub.extraConfig.00-hami-jupyter is missing: it loads the GPU settings into the hub; keep the chart's entry" -}}
{{- end -}}
{{- $volume := false -}}
{{- range ($hub.extraVolumes | default list) -}}
{{- if and .configMap (eq (.configMap.name | default "") (include "hami-jupyterhub.hubConfigMap" $)) }}{{ $volume = .name }}{{ end -}}
{{- end -}}
{{- $mounted := false -}}
{{- range ($hub.extraVolumeMounts | default list) -}}
{{- if and $volume (eq .name $volume) (eq .mountPath (include "hami-jupyterhub.hubConfigDir" $)) }}{{ $mounted = true }}{{ end -}}
{{- end -}}
{{- if not $mounted -}}
{{- fail (printf "hami-jupyterhub: jupyterhub.hub.extraVolumes and extraVolumeMounts must keep the chart's entries (configMap %s mounted at %s); add yours after them" (include "hami-jupyterhub.hubConfigMap" .) (include "hami-jupyterhub.hubConfigDir" .)) -}}
{{- end -}}
{{- if .Values.jupyterhub.singleuser.profileList -}}
{{- fail "hami-jupyterhub: leave jupyterhub.singleuser.profileList empty: the hub builds the form from gpu.profiles" -}}
{{- end -}}
{{- $_ := include "hami-jupyterhub.gpuImageEntry" . -}}
{{- end }}
