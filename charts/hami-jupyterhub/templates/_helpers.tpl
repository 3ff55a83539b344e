{{/*
Names shared by the templates and by values.yaml's jupyterhub.hub section, which cannot
be templated (z2jh does not render its extraVolumes): keep them fixed.
*/}}
{{- define "hami-jupyterhub.hubConfigMap" -}}hami-jupyter-hub-config{{- end }}
{{- define "hami-jupyterhub.hubConfigDir" -}}/usr/local/etc/hami-jupyter{{- end }}
{{- define "hami-jupyterhub.arbiterName" -}}hami-jupyter-arbiter{{- end }}

{{- define "hami-jupyterhub.labels" -}}
app.kubernetes.io/part-of: hami-jupyterhub
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The GPU image: the z2jh pre-puller entry hami-gpu-notebook, the one place it is named. */}}
{{- define "hami-jupyterhub.gpuImageEntry" -}}
{{- $images := ((.Values.jupyterhub.prePuller | default dict).extraImages | default dict) -}}
{{- $entry := get $images "hami-gpu-notebook" -}}
{{- if not $entry -}}
{{- fail "hami-jupyterhub: the GPU image is missing: set jupyterhub.prePuller.extraImages.hami-gpu-notebook.name and .tag (the image GPU profiles and the arbiter run)" -}}
{{- end -}}
{{- toJson $entry -}}
{{- end }}

{{- define "hami-jupyterhub.gpuImage" -}}
{{- $entry := include "hami-jupyterhub.gpuImageEntry" . | fromJson -}}
{{- printf "%s:%s" $entry.name $entry.tag -}}
{{- end }}

{{/* The arbiter runs (and GPU pods mount its socket) only with our own interceptor. */}}
{{- define "hami-jupyterhub.arbiterOn" -}}
{{- if and .Values.arbiter.enabled (eq .Values.gpu.interceptor "bundled") }}true{{ end -}}
{{- end }}

{{/*
The hub's configuration, as traitlets sections: the 00-hami-jupyter extraConfig entry
sets c[section][trait] = value for each. Every GPU profile (and the custom size) runs the
GPU image unless its kubespawnerOverrides entry names another.
*/}}
{{- define "hami-jupyterhub.hubConfig" -}}
{{- $gpu := .Values.gpu -}}
{{- $image := include "hami-jupyterhub.gpuImage" . -}}
{{- $overrides := deepCopy ($gpu.kubespawnerOverrides | default dict) -}}
{{- $gpuNames := list -}}
{{- range $gpu.profiles }}{{ $gpuNames = append $gpuNames .name }}{{ end -}}
{{- if $gpu.custom }}{{ $gpuNames = append $gpuNames "custom" }}{{ end -}}
{{- range $gpuNames -}}
{{- $own := get $overrides . | default dict -}}
{{- $_ := set $overrides . (merge (deepCopy $own) (dict "image" $image)) -}}
{{- end -}}
{{- $socketDir := "" -}}
{{- if include "hami-jupyterhub.arbiterOn" . }}{{ $socketDir = .Values.arbiter.socketDir }}{{ end -}}
{{- $config := dict
  "JupyterHub" (dict "spawner_class" "hami_spawner.kubernetes.HamiSpawner")
  "GpuProfiles" (dict
    "profiles" ($gpu.profiles | default list)
    "custom" ($gpu.custom | default dict)
    "max_gpu_servers_per_user" ($gpu.maxServersPerUser | int)
    "cpu_profile_name" $gpu.cpuProfile.name
    "cpu_profile_display_name" $gpu.cpuProfile.displayName)
  "HamiSpawner" (dict
    "interceptor" $gpu.interceptor
    "libvgpu_path" $gpu.libvgpuPath
    "slice_file" $gpu.sliceFile
    "gpu_scheduler_name" .Values.hami.schedulerName
    "node_scheduler_policy" $gpu.nodeSchedulerPolicy
    "kubespawner_overrides" $overrides
    "arbiter_socket_dir" $socketDir) -}}
{{- toPrettyJson $config -}}
{{- end }}
